"""Models that take pixels: RGB floats in [0, 1], shape ``(B, 3, H, W)``; normalisation happens inside.

Every model camkit returns carries three attributes and two methods:

- ``input_size``: ``(H, W)`` the model was trained at;
- ``default_layer``: dotted name for ``model.get_submodule`` (the layer CAM methods explain by default);
- ``categories``: class names (index -> name) or ``None``;
- ``preprocess(x)``: pixels -> the tensor the network proper expects (e.g. ``(x - mean) / std``);
- ``forward_preprocessed(t)``: the network proper on an already preprocessed tensor.

``forward(x) == forward_preprocessed(preprocess(x))``. Zoo models are *transparent*: the normaliser is
a pair of non-persistent buffers, not a child module, so layer names are the architecture's own
(``"layer4"`` on ResNet-50) and state dicts keep their usual keys. `wrap` (any user module)
composes instead: the user's module is the child ``net`` and ``get_submodule`` also accepts names
relative to it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from camkit.core.pixels import check_range

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PixelModel(nn.Module):
    """Base of camkit models: ``forward(x) = forward_preprocessed((x - mean) / std)`` per channel.

    Subclasses (or mixed-in architectures, see `as_pixel_model`) provide
    ``forward_preprocessed``; by default it is the next ``forward`` in the MRO.
    """

    input_size: tuple[int, ...]
    default_layer: str | None  # None: none chosen at load time, layer="auto" chooses per call
    categories: list[str] | None
    task: str = "classification"  # or "segmentation", "detection" (models loaded by name)
    interpolation: str = "bilinear"  # how camkit resizes images for the model ("bicubic" or "bilinear")
    crop_pct: float | None = None  # the model's eval crop (input / resize side), kept for reference
    #: ``(keyword, (H, W))``: the network proper takes an input of another size than ``(H, W)`` only when its
    #: forward gets ``keyword=True`` (Hugging Face ViTs: ``interpolate_pos_encoding``); None: any size as is
    resize_keyword: tuple[str, tuple[int, int]] | None = None

    def set_pixel_interface(
        self,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: tuple[int, ...],
        default_layer: str,
        categories: list[str] | None,
    ) -> None:
        """Attach the normaliser (non-persistent buffers) and the descriptive attributes."""
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        self.register_buffer("pixel_mean", torch.tensor(mean, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, device=device).view(1, 3, 1, 1), persistent=False)
        self.input_size = tuple(int(s) for s in input_size)  # (H, W); video models (T, H, W)
        self.default_layer = default_layer
        self.categories = list(categories) if categories is not None else None

    def preprocess(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` with per-channel mean and std; ``x`` is ``(B, 3, H, W)`` (a clip:
        ``(B, 3, T, H, W)``) in [0, 1]."""
        lift = (1, 3) + (1,) * (x.dim() - 2)
        return (x - self.pixel_mean.to(x.dtype).view(lift)) / self.pixel_std.to(x.dtype).view(lift)

    def forward_preprocessed(self, t: Tensor) -> Tensor:
        """The network proper on a preprocessed tensor (with ``resize_keyword=True`` at another size)."""
        if self.resize_keyword is not None and tuple(t.shape[-2:]) != tuple(self.resize_keyword[1]):
            return super().forward(t, **{self.resize_keyword[0]: True})  # type: ignore[misc]
        return super().forward(t)  # type: ignore[misc]

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        check_range(x, self)  # 0..255 or normalised input would run silently wrong; warns once
        return self.forward_preprocessed(self.preprocess(x))


def as_pixel_model(
    net: nn.Module,
    pixel_class: type[PixelModel],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: tuple[int, ...],
    default_layer: str,
    categories: list[str] | None,
) -> PixelModel:
    """Turn a freshly built architecture instance into ``pixel_class`` (a subclass of both) in place.

    Only for modules camkit itself just constructed: module names and state-dict keys are unchanged.
    """
    if not issubclass(pixel_class, type(net)):
        raise TypeError(f"{pixel_class.__name__} does not extend {type(net).__name__}")
    net.__class__ = pixel_class
    assert isinstance(net, PixelModel)
    net.set_pixel_interface(
        mean=mean, std=std, input_size=input_size, default_layer=default_layer, categories=categories
    )
    net.get_submodule(default_layer)  # fail early on a wrong default
    return net


class WrappedModel(PixelModel):
    """A user module behind a preprocessing callable: ``forward(x) = net(preprocess(x))``.

    The user module is the child ``net``; ``get_submodule("layer4")`` falls back to ``"net.layer4"``.
    ``default_layer`` is stored with the ``net.`` prefix, valid for ``named_modules()`` too.
    """

    def __init__(
        self,
        module: nn.Module,
        preprocess: Callable[[Tensor], Tensor] | None,
        *,
        input_size: tuple[int, ...],
        default_layer: str,
        categories: list[str] | None,
    ) -> None:
        super().__init__()
        self.net = module
        if isinstance(preprocess, nn.Module):
            self.preprocessor: Callable[[Tensor], Tensor] | None = preprocess  # registered: moves with .to()
        else:
            self.__dict__["preprocessor"] = preprocess
        self.set_pixel_interface(
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=input_size,
            default_layer="", categories=categories,
        )
        self.default_layer = self._qualify(default_layer)

    def _qualify(self, name: str) -> str:
        """Name relative to the wrapper for a name relative to either the wrapper or the user module."""
        self.get_submodule(name)
        return name if name.startswith("net.") or name == "net" else f"net.{name}" if name else "net"

    def get_submodule(self, target: str) -> nn.Module:
        """Like ``nn.Module.get_submodule``, also accepting names relative to the wrapped module."""
        try:
            return super().get_submodule(target)
        except AttributeError as own_error:
            try:
                return self.net.get_submodule(target)
            except AttributeError:
                raise own_error from None

    def preprocess(self, x: Tensor) -> Tensor:
        """The user's preprocessing callable (identity when none was given)."""
        return x if self.preprocessor is None else self.preprocessor(x)

    def forward_preprocessed(self, t: Tensor) -> Tensor:
        """The wrapped module."""
        return self.net(t)


def wrap(
    module: nn.Module,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    *,
    input_size: tuple[int, int] = (224, 224),
    default_layer: str,
    categories: list[str] | None = None,
) -> WrappedModel:
    """Wrap any ``nn.Module`` so it takes pixels in [0, 1] like camkit's zoo models.

    ``preprocess`` maps a ``(B, 3, H, W)`` pixel batch to the module's input (e.g. ImageNet
    normalisation); ``default_layer`` is a name relative to ``module`` (or to the wrapper, ``net.*``).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"wrap() needs an nn.Module, got {type(module).__name__}")
    if preprocess is not None and not callable(preprocess):
        raise TypeError(f"preprocess must be callable (tensor -> tensor), got {type(preprocess).__name__}")
    return WrappedModel(
        module, preprocess, input_size=input_size, default_layer=default_layer, categories=categories
    )
