"""The base class every CAM method shares: input checks, layers, targets, hooks, post-processing.

A method only says how it turns the captured activations ``A`` (and, for gradient methods,
``dY/dA``) into a low-resolution map; the base runs the model, keeps the user's model as it
was, upsamples, normalises and fuses several layers.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Union

import torch
from torch import nn

from ..core import engine
from ..core.hooks import Hooks
from ..core.layers import POOLING, LayerSpec, resolve_layers
from ..core.outputs import to_logits
from ..core.postprocess import finalize
from ..core.state import preserved
from ..core.targets import TargetSpec, Targets, resolve_targets
from ..core.tokens import as_grid, patch_size, token_grid
from ..errors import CamkitError, InputError, LayerNotFoundError

Reshape = Callable[[torch.Tensor], torch.Tensor]


def positive_int(name: str, value: Any, meaning: str) -> int:
    """``value`` if it is a positive int, else an :class:`InputError` saying what ``name`` means."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int ({meaning}), got {value!r}")
    return value
_AUTO: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], str]]" = weakref.WeakKeyDictionary()


@dataclass
class Explanation:
    """What a method returns.

    ``maps``: ``(B, H, W)`` (``(B, K, H, W)`` for TopK/BottomK) float32 in [0, 1] at the input size.
    ``raw``: the low-resolution map after ReLU, before upsampling and normalisation (a list when
    several layers are fused). ``weights``: per-channel weights ``(B, [K,] C)`` where the method has
    them. ``scores``: the explained model outputs ``(B, [K])``. ``targets``: class indices
    ``(B, [K])`` (None for a callable target). ``logits``: the full model output ``(B, N)``.
    """

    maps: torch.Tensor
    raw: Union[torch.Tensor, list[torch.Tensor]]
    weights: Union[torch.Tensor, list[torch.Tensor], None]
    scores: torch.Tensor
    targets: Optional[torch.Tensor]
    logits: Optional[torch.Tensor]
    layers: list[str]


@dataclass
class Context:
    """Everything a method needs to compute its maps for one call."""

    model: nn.Module
    x: torch.Tensor
    pass_: engine.Pass
    targets: Targets
    scores: torch.Tensor  # (B, K)
    acts: list[torch.Tensor]  # per layer, (B, C, h, w)
    modules: list[nn.Module]  # the target layers
    to_grid: list[Reshape]  # per layer, raw layer output -> (B, C, h, w)


class BaseCAM:
    """Shared machinery. Subclasses set ``uses_gradients`` and implement :meth:`compute`.

    Parameters: ``model`` any ``nn.Module``; ``layer`` ``"auto"`` (the model's ``default_layer``
    attribute if it has one, as camkit zoo models do, else :func:`auto_layer`), a dotted name, a module or a list
    of them (maps of several layers are fused by element-wise max); ``eval_mode`` explain the model
    in eval mode (dropout off, BatchNorm running statistics; the flags are restored afterwards);
    ``reshape`` a callable turning the layer output into ``(B, C, h, w)`` for layouts camkit cannot
    infer (tokens are handled automatically).
    """

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = "auto",
        *,
        eval_mode: bool = True,
        reshape: Optional[Reshape] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer = layer
        self.eval_mode = eval_mode
        self.reshape = reshape
        self._patch = patch_size(model)
        self._in_channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)

    # -- context manager: hooks only live during a call, so there is nothing to hold open -------
    def __enter__(self) -> "BaseCAM":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer!r})"

    # -- public API --------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, targets: TargetSpec = None) -> torch.Tensor:
        """Maps ``(B, H, W)`` (``(B, K, H, W)`` for TopK/BottomK) in [0, 1] on ``x``'s device."""
        return self.explain(x, targets).maps

    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> Explanation:
        """Compute the maps and everything behind them; see :class:`Explanation`."""
        x = self._check_input(x)
        # autograd on for target scores even under a caller's no_grad; the engine turns it off before the target
        with preserved(self.model, self.eval_mode), torch.enable_grad():
            names, modules = self._layers(x)
            p = self._forward(x, modules, names)
            t = resolve_targets(targets, p.logits, x.shape[0])
            scores = t.scores(p.output, p.logits)
            to_grid = [self._grid_fn(a, n, x) for a, n in zip(p.acts, names)]
            acts = [f(a.detach()).float() for f, a in zip(to_grid, p.acts)]
            ctx = Context(self.model, x, p, t, scores, acts, modules, to_grid)
            raw, weights = self.compute(ctx)
        raw = [torch.relu(r) for r in raw]
        maps = finalize(raw, (x.shape[-2], x.shape[-1]))
        squeeze = (lambda v: v[:, 0] if v is not None else None) if not t.keep_k else (lambda v: v)
        return Explanation(
            maps=squeeze(maps),
            raw=squeeze(raw[0]) if len(raw) == 1 else [squeeze(r) for r in raw],
            weights=None if weights is None else (squeeze(weights[0]) if len(weights) == 1 else [squeeze(w) for w in weights]),
            scores=squeeze(scores.detach()),
            targets=squeeze(t.indices),
            logits=None if p.logits is None else p.logits.detach(),
            layers=names,
        )

    # -- what subclasses implement -------------------------------------------------------------------
    def compute(self, ctx: Context) -> tuple[list[torch.Tensor], Optional[list[torch.Tensor]]]:
        """Per layer: raw map ``(B, K, h, w)`` before ReLU, and weights ``(B, K, C)`` or None."""
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, modules: list[nn.Module], names: list[str]) -> engine.Pass:
        """The explained forward pass; a hook point for methods that observe more of it (Ablation-CAM)."""
        return engine.forward(self.model, x, modules, names, record=self.uses_gradients)

    # -- helpers -----------------------------------------------------------------------------------------
    def _check_input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"input must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            hint = " (add a batch dimension: x.unsqueeze(0))" if x.dim() == 3 else ""
            raise InputError(f"input must have shape (B, C, H, W), got {tuple(x.shape)}{hint}")
        if not x.is_floating_point():
            raise InputError(f"input must be a floating-point tensor, got {x.dtype} (try x.float() / 255)")
        if self._in_channels is not None and x.shape[1] != self._in_channels:
            raise InputError(
                f"the model's first convolution expects {self._in_channels} channels, got input of shape "
                f"{tuple(x.shape)} with {x.shape[1]}"
            )
        if x.shape[0] == 0:
            raise InputError("input batch is empty")
        if torch.is_inference_mode_enabled() and self.uses_gradients:
            raise CamkitError(
                f"{type(self).__name__} needs autograd, which torch.inference_mode() disables; call it "
                "outside inference_mode (a surrounding torch.no_grad() is fine)"
            )
        if x.is_inference():
            x = x.clone()  # outside inference mode a clone is a normal tensor
        return x.detach()

    def _grid_fn(self, a: torch.Tensor, name: str, x: torch.Tensor) -> Reshape:
        if self.reshape is not None:
            return self.reshape
        if a.dim() == 4:
            return lambda t: t
        hw = (x.shape[-2], x.shape[-1])
        grid = token_grid(a, x.shape[0], hw, self._patch)
        if grid is None:
            as_grid(a, x.shape[0], hw, self._patch, name)  # raises the explanatory error
        return grid  # type: ignore[return-value]

    def _layers(self, x: torch.Tensor) -> tuple[list[str], list[nn.Module]]:
        if isinstance(self.layer, str) and self.layer == "auto":
            key = (x.shape[-2], x.shape[-1])
            cache = _AUTO.setdefault(self.model, {})  # one probe per model and input size
            preset = getattr(self.model, "default_layer", None)  # camkit zoo models name their layer
            if key not in cache:
                cache[key] = preset if isinstance(preset, str) else auto_layer(self.model, x[:1], self._patch)
            spec: LayerSpec = cache[key]
        else:
            spec = self.layer
        pairs = resolve_layers(self.model, spec)
        return [n for n, _ in pairs], [m for _, m in pairs]


def auto_layer(model: nn.Module, x: torch.Tensor, patch: Optional[tuple[int, int]] = None) -> str:
    """The last layer whose output is spatial (a feature grid or grid-able tokens), is not a pooling
    layer, and on whose spatial positions the top-1 score actually depends.

    One probe forward + backward on one image: e.g. ``layer4`` for ResNet, ``features.29`` for VGG-16
    and the last block's first norm for a ViT (later token outputs only feed the class token).
    """
    fired: list[tuple[str, torch.Tensor]] = []
    pooled: set[int] = set()

    def make_hook(name: str, module: nn.Module):
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                fired.append((name, out))
                if isinstance(module, POOLING):
                    pooled.add(id(out))
        return hook

    with Hooks() as hooks:  # they fire for this call only, not for other threads using the model
        for name, m in model.named_modules():
            if name:
                hooks.on_forward(m, make_hook(name, m))
        with torch.enable_grad():
            xin = x.detach().clone().requires_grad_(True)
            out = model(xin)
            score = to_logits(out).reshape(1, -1).max()
            hw = (x.shape[-2], x.shape[-1])
            cands = []
            for name, t in fired:
                if id(t) in pooled or not t.requires_grad:
                    continue
                if t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1:
                    cands.append((name, t, None))
                elif t.dim() == 3:
                    grid = token_grid(t, 1, hw, patch)
                    if grid is not None:
                        cands.append((name, t, grid))
            if not cands:
                raise LayerNotFoundError(
                    f"found no layer with a spatial output in {type(model).__name__}; pass layer='name'"
                )
            grads = torch.autograd.grad(score, [t for _, t, _ in cands], allow_unused=True)
    for (name, _t, grid), g in reversed(list(zip(cands, grads))):
        if g is None:
            continue
        g = g if grid is None else grid(g)
        if g.abs().sum() > 0:
            return name
    raise LayerNotFoundError(
        f"the top-1 score of {type(model).__name__} has zero gradient at every spatial layer, so no layer "
        "can be chosen automatically (is the classifier initialised to zeros, as torchvision's ViT head "
        "is?); pass layer='name'"
    )
