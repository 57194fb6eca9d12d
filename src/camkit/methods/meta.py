"""Meta-methods: a method built around another one, its ``base`` (a registry name or class).

`MetaCAM` holds the base and binds classes for registry names ``"meta:base"``;
`FinerCAM` explains a contrastive target with the base; `RefineCAM` multiplies the
base's normalised maps of several layers. (SESS, the third, is in `.sess`.)
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, Optional, Union

import torch
from torch import nn

from ..core.state import preserved
from ..errors import InputError
from ..layers import choose_layers, stage_layers
from ..targets import Contrast, TargetSpec
from .base import BaseCAM, positive_int
from .explanation import Explanation
from .gradient import GradCAM, GradCAMPlusPlus
from .registry import get, register

Base = Union[str, type, None]


class MetaCAM(BaseCAM):
    """A method around a ``base`` method: ``base=`` a registry name (``"layercam"``, ``"sess:gradcam"``)
    or a method class; default the paper's (``default_base``). Every other option goes to the base
    (``eval_mode``, ``aug_smooth``, ``precision``, the base's own options). The registry name
    ``"meta:base"`` gives the class bound to that base (``get("finercam:layercam")``), whose declared
    ``cost``, ``expensive`` and ``uses_gradients`` are those of the pair."""

    meta: ClassVar[bool] = True
    default_base: ClassVar[type] = GradCAM
    bound_base: ClassVar[Optional[type]] = None
    _bound: ClassVar[dict[tuple[type, type], type]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        """A meta-method class declares the cost of the pair it names (its base: bound or default)."""
        super().__init_subclass__(**kw)
        base = cls.bound_base or cls.default_base
        cls.uses_gradients, cls.cost, cls.expensive = base.uses_gradients, cls.describe_cost(base), cls.is_expensive(base)
        cls.grid_dims, cls.grid_note = cls.shared_grids(base)

    def __init__(self, model: nn.Module, layer: Any = "auto", *, base: Base = None, **options: Any) -> None:
        super().__init__(model, layer)
        base_cls = self._base_class(base)
        self.base = base_cls(model, layer, **options)
        self.uses_gradients = base_cls.uses_gradients  # type: ignore[misc]
        self.cost = self.describe_cost(base_cls)  # type: ignore[misc]
        self.expensive = self.is_expensive(base_cls)  # type: ignore[misc]
        self.grid_dims, self.grid_note = self.shared_grids(base_cls)  # type: ignore[misc]

    @classmethod
    def _base_class(cls, base: Base) -> type:
        bound = cls.bound_base or cls.default_base
        if base is None:
            return bound
        found = get(base) if isinstance(base, str) else base
        if not (isinstance(found, type) and issubclass(found, BaseCAM)):
            raise InputError(f"base must be a method name or a camkit method class, got {base!r}")
        if found.output != "cam":
            raise InputError(f"base {found.name!r} returns pixel attributions, not maps; {cls.name} needs a CAM method")
        if cls.bound_base is not None and found is not cls.bound_base:
            raise InputError(f"{cls.name!r} already names its base ({cls.bound_base.name}); drop base={base!r}")
        return found

    @classmethod
    def describe_cost(cls, base: type) -> str:
        """The cost of this method around ``base``."""
        return str(base.cost)

    @classmethod
    def shared_grids(cls, base: type) -> tuple[tuple[int, ...], str]:
        """The grids both this meta-method and ``base`` are defined on, and the note of the one that limits them."""
        dims = tuple(d for d in cls.grid_dims if d in base.grid_dims)
        note = cls.grid_note if len(dims) == len(cls.grid_dims) or not base.grid_note else base.grid_note
        return dims, note

    @classmethod
    def is_expensive(cls, base: type) -> bool:
        return bool(base.expensive)

    @classmethod
    def bound(cls, base: type) -> type:
        """This meta-method with ``base`` fixed: the class the registry gives for ``"meta:base"``."""
        if not (isinstance(base, type) and issubclass(base, BaseCAM)) or base.output != "cam":
            raise InputError(f"{cls.name} needs a CAM method as its base, got {getattr(base, 'name', base)!r}")
        key = (cls, base)
        if key not in MetaCAM._bound:
            MetaCAM._bound[key] = type(f"{cls.__name__}[{base.name}]", (cls,), {
                "name": f"{cls.name}:{base.name}", "bound_base": base, "__doc__": cls.__doc__,
                "__module__": cls.__module__,
            })
        return MetaCAM._bound[key]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base={type(self.base).__name__}, layer={self.layer!r})"


@register("finercam")
class FinerCAM(MetaCAM):
    """Finer-CAM (Zhang et al., CVPR 2025, arXiv 2501.11309): the base method explains the contrast
    ``S = y_c - alpha * (1/T) sum_{t<=T} y_{d_t}`` instead of ``y_c``, ``d_t`` the ``T`` classes whose
    logits are closest to ``y_c`` (see `camkit.targets.Contrast`), so features shared with
    similar classes cancel.

    Defaults: ``base="gradcam"``, ``alpha=0.6``, ``references=3``, ``weighting="mean"`` -- the paper's
    ``y_c - gamma y_d`` averaged over references with gamma = 0.6, as torchcam's ``FinerCAM``
    (``gamma=0.6, num_references=3``). pytorch-grad-cam's ``FinerCAM`` uses ``alpha=1`` and weights each
    reference's difference by its softmax probability, ``sum_t p_t (y_c - alpha y_{d_t}) / sum_t p_t``:
    ``FinerCAM(..., alpha=1, weighting="probability")``. The Explanation's ``scores`` are the
    contrasts; ``targets`` the classes ``c``; ``target`` the resolved contrast (its ``refs``).
    A model with fewer than 2 classes is refused.
    """

    def __init__(self, model: nn.Module, layer: Any = "auto", *, base: Base = None, alpha: float = 0.6,
                 references: int = 3, weighting: str = "mean", **options: Any) -> None:
        super().__init__(model, layer, base=base, **options)
        Contrast(None, alpha, references, weighting)  # checks the options now
        self.alpha, self.references, self.weighting = alpha, references, weighting

    @classmethod
    def describe_cost(cls, base: type) -> str:
        return f"{base.cost} (explaining a contrast of logits)"

    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> Explanation:
        e = self.base.explain(x, Contrast(targets, self.alpha, self.references, self.weighting))
        contrast = e.target
        assert isinstance(contrast, Contrast) and contrast.classes is not None
        classes = contrast.classes if contrast.keep_k else contrast.classes[:, 0]
        return dataclasses.replace(e, targets=classes)


@register("refinecam")
class RefineCAM(MetaCAM):
    """RefineCAM (arXiv 2605.14641, "How to Evaluate and Refine your CAM"): the product of the base's
    maps of several layers, each brought to the input and min-max normalised first,
    ``L = norm(prod_l norm(up(relu(L_l))))``, so deep layers say *what* and shallow ones *where*.

    ``layer``: a list of two or more layers is used as given; one layer (or ``"auto"``: the model's
    explained layer) is combined with the last outputs of the ``levels - 1`` finer-grid stages before
    it (`camkit.layers.stage_layers`: ``layer2``, ``layer3``, ``layer4`` on ResNet). Default base:
    Grad-CAM++ (as pytorch-grad-cam and torchcam). Each layer's map is normalised before the
    product, as the paper says and torchcam does. pytorch-grad-cam's loop meant to do it
    (``for cam in cam_per_layer: cam = cam / max``) only rebinds its loop variable and normalises
    nothing; its maps come out right only because its base methods already return min-max normalised
    maps. Each layer's map is brought to the input before the product (pytorch-grad-cam); torchcam
    multiplies at the finest layer's grid unless given ``target_shape``. ``raw`` holds the per-layer
    maps before normalisation.
    """

    default_base = GradCAMPlusPlus

    def __init__(self, model: nn.Module, layer: Any = "auto", *, base: Base = None, levels: int = 3,
                 **options: Any) -> None:
        super().__init__(model, layer, base=base, **options)
        positive_int("levels", levels, "layers combined when one layer is given, >= 2")
        if levels < 2:
            raise InputError(f"levels must be >= 2 (the layer and the stages before it), got {levels}")
        self.levels = levels

    @classmethod
    def describe_cost(cls, base: type) -> str:
        return f"{base.cost}, for 2+ layers in the same pass"

    def layers_for(self, x: torch.Tensor) -> list[str]:
        """The layers combined on input ``x``."""
        with preserved(self.model, self.base.eval_mode):
            pairs = choose_layers(self.model, self.layer, x)
            if len(pairs) >= 2:
                return [n for n, _ in pairs]
            return stage_layers(self.model, x, pairs[0][0], self.levels)

    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> Explanation:
        x = self.base._check_input(x)
        method = copy.copy(self.base)
        method.layer, method.fusion = self.layers_for(x), "product"
        return method.explain(x, targets)
