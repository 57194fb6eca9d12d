"""The base class every CAM method shares: input checks, layers, targets, hooks, post-processing.

A method only says how it turns the captured activations ``A`` (and, for gradient methods,
``dY/dA``) into a low-resolution map; the base runs the model, keeps the user's model as it
was, upsamples, normalises and fuses several layers.
"""
from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Iterator, Optional, Union

import torch
from torch import nn

from ..core import engine
from ..core.postprocess import finalize
from ..core.precision import check_finite, model_forward, parse_precision
from ..core.region import InputRegion, input_region
from ..core.state import preserved
from ..errors import CamkitError, InputError, UnsupportedModelError
from ..core.hooks import Hooks
from ..layers import (
    Layout, LayerSpec, choose_layers, first_conv_channels, kind_of, model_grid_dims, patch_size, quantized_layers,
    read_layer, strip_prefixes, unwrap,
)
from ..targets import TargetSpec, resolve_targets
from ..layers.attention import transformer_blocks
from .explanation import Context, Explanation, Maps, Reshape
from .smoothing import Augment, aug_explain, augmentations, channel_contributions, eigen_compute


def positive_int(name: str, value: Any, meaning: str) -> int:
    """``value`` if it is a positive int, else an `InputError` saying what ``name`` means."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int ({meaning}), got {value!r}")
    return value


@contextmanager
def size_hint(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """A model that refused ``x`` (a ``ValueError`` from its own code) while its forward takes
    ``interpolate_pos_encoding`` (Hugging Face ViT, DeiT, BEiT...) was built for another input size:
    an `InputError` says how to run it at this one."""
    try:
        yield
    except ValueError as e:
        if isinstance(e, CamkitError) or "interpolate_pos_encoding" not in inspect.signature(model.forward).parameters:
            raise
        raise InputError(
            f"{type(model).__name__} refused the input of size {x.shape[-2]}×{x.shape[-1]} ({e}): it was built "
            "for another size and takes other sizes only when called with interpolate_pos_encoding=True. Resize "
            "the input to the model's size, or save the model (model.save_pretrained(DIR), with its image "
            "processor) and load it with camkit.models.load('hf:DIR'), which passes the flag for other sizes"
        ) from e


#: messages of PyTorch's convolutions and poolings given an input smaller than their kernel
_TOO_SMALL = ("Kernel size can't be greater than actual input size", "Output size is too small",
              "smaller than kernel", "Padding size should be less than the corresponding input dimension")


def _dims_of(shape: Any) -> str:
    return "×".join(str(int(s)) for s in shape)


@contextmanager
def too_small(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """A model that failed because ``x`` is smaller than one of its kernels (a clip shorter than a 3-D
    network's temporal kernel, an image smaller than its pooling): an `InputError` naming the
    module, its kernel and the size it got. The module is found by running the failing forward again
    with hooks (on the error path only)."""
    try:
        yield
    except RuntimeError as e:
        if isinstance(e, CamkitError) or not any(m in str(e) for m in _TOO_SMALL):
            raise
        seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []

        def pre(name: str) -> Callable[..., None]:
            def hook(m: nn.Module, args: Any) -> None:
                if args and isinstance(args[0], torch.Tensor) and hasattr(m, "kernel_size"):
                    seen.append((name, m, tuple(args[0].shape)))
            return hook

        try:
            with Hooks() as hooks, torch.no_grad():
                for n, m in model.named_modules():
                    hooks.before_forward(m, pre(n))
                model(x[:1])
        except Exception:
            pass
        where = ""
        if seen:
            name, m, shape = seen[-1]
            k = getattr(m, "kernel_size")
            where = (f" at {name!r} ({type(m).__name__}, kernel {k}), which got an input of "
                     f"{_dims_of(shape[2:])}")
        what = "clip or volume of T×H×W" if x.dim() == 5 else "image of H×W"
        raise InputError(
            f"{type(model).__name__} cannot run on this {what} = {_dims_of(x.shape[2:])}: the input is smaller than "
            f"a kernel of the model{where} ({e}). Pass a larger input"
            + (" (a clip needs enough frames, a volume enough slices, for the kernels of every stage: torchvision's "
               "video models take 16 frames)" if x.dim() == 5 else "")
        ) from e


def per_pass(batch_size: int, x: torch.Tensor) -> int:
    """Inputs per pass for a ``batch_size`` counted in 2-D frames: a clip or volume of ``T`` frames
    (depth slices) counts ``T``, so batched methods keep bounded memory on clips (at least one per pass)."""
    frames = 1 if x.dim() <= 4 else int(torch.tensor(x.shape[2:-2]).prod())
    return max(1, batch_size // frames)


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` elements: the passes of a batched method."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


#: what each ``requires`` entry of a method means: a test on the model and the phrase an error shows
REQUIREMENTS: dict[str, tuple[Callable[[nn.Module], bool], str]] = {
    "attention": (lambda model: bool(transformer_blocks(model)),
                  "transformer blocks with attention camkit can read (nn.MultiheadAttention, timm or Hugging Face)"),
}


class BaseCAM:
    """Shared machinery. Subclasses set ``uses_gradients`` and implement `compute`.

    Parameters: ``model`` any ``nn.Module``; ``layer`` ``"auto"`` (the model's ``default_layer``
    attribute if it has one, as camkit zoo models do, else `camkit.layers.auto_layer`), a dotted name, a module or a list
    of them (maps of several layers are fused by element-wise max); ``eval_mode`` explain the model
    in eval mode (dropout off, BatchNorm running statistics; the flags are restored afterwards);
    ``layout`` forces how a layer output is read: ``"nchw"`` ``(B, C, h, w)``, ``"nhwc"``
    channels-last ``(B, h, w, C)`` or ``"tokens"`` ``(B | N, prefix + h*w, C)``; by default camkit reads
    it from evidence (`camkit.layers`) and refuses outputs that
    are not feature maps (attention internals, MLP hidden widths, unrolled tokens). ``reshape`` a
    callable turning the layer output into ``(B, C, h, w)`` for anything else. ``aug_smooth`` (True or an
    `camkit.methods.smoothing.Augment`) averages the maps of flipped and rescaled views in the
    input frame; ``eigen_smooth`` keeps the first principal component of the per-channel
    contributions (see `camkit.methods.smoothing`). ``precision`` ``"fp32"``, ``"bf16"`` or
    ``"fp16"``: the model's forward runs under autocast while weights and maps stay float32, and
    ``channels_last`` runs it in channels-last memory format (see `camkit.core.precision`).
    """

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True
    #: what the method produces: ``"cam"`` -- maps ``(B, [K,] H, W)`` in [0, 1] (the map metrics apply);
    #: ``"attribution"`` -- signed pixel-space attributions ``(B, [K,] C, H, W)`` (draw with ``viz.attribution``);
    #: ``"concepts"`` -- maps ``(B, k, H, W)`` in [0, 1] of k concepts found in the activations, not of a
    #: class (DFF: the labels are in ``Explanation.targets`` / ``concept_scores``; class-map metrics do not apply)
    output: ClassVar[str] = "cam"
    #: what one explanation costs, in passes of the model (``camkit list`` prints it)
    cost: ClassVar[str] = "one forward, a backward through the layers after the target"
    #: True when the cost grows with the layer's channels or a sample count (hundreds of forwards):
    #: such methods are left out of the demo's photo run and of ``--methods all`` unless named
    expensive: ClassVar[bool] = False
    #: the target kinds the method is designed for; a method built for one task (SegEigenCAM:
    #: ``("segmentation",)``) still runs on the others, but tables of another task leave it out
    tasks: ClassVar[tuple[str, ...]] = ("classification", "segmentation", "detection")
    #: True for a sanity baseline (RandomCAM): shown beside the uniform/centre/random maps, never recommended
    baseline: ClassVar[bool] = False
    #: the smoothing options the method takes; it refuses the others with an InputError saying why
    smoothing: ClassVar[tuple[str, ...]] = ("aug_smooth", "eigen_smooth")
    #: True when the map is a function of the target layer's activations and of the network after the
    #: layer only (gradients through it, its weights), never of further passes over the input: SESS's
    #: fast mode may then give the method activations cropped from a larger image
    from_layer: ClassVar[bool] = False
    #: what the model must have beyond being an ``nn.Module`` (() = nothing): LeGrad ("attention",) needs
    #: transformer blocks with attention it can read; elsewhere it raises a clear error. Each entry is a
    #: key of ``REQUIREMENTS``; ``unmet_requirements(model)`` says which the model lacks
    requires: ClassVar[tuple[str, ...]] = ()
    #: the grids the method is defined on: 2 -- images ``(B, C, H, W)``, maps ``(B, H, W)``; 3 -- clips and
    #: volumes ``(B, C, T, H, W)``, maps ``(B, T, H, W)`` upsampled trilinearly. A method without 3 refuses
    #: 5-D inputs with ``grid_note`` as the reason
    grid_dims: ClassVar[tuple[int, ...]] = (2, 3)
    grid_note: ClassVar[str] = ""
    #: how the maps of several layers are fused (`camkit.core.postprocess.finalize`): "max" or "product"
    fusion: str = "max"

    @classmethod
    def unmet_requirements(cls, model: nn.Module) -> list[str]:
        """What of ``requires`` ``model`` lacks, one phrase each (e.g. "transformer blocks with attention
        camkit can read (a ViT)"); [] when the method can run on it."""
        return [REQUIREMENTS[r][1] for r in cls.requires if not REQUIREMENTS[r][0](model)]

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = "auto",
        *,
        eval_mode: bool = True,
        reshape: Optional[Reshape] = None,
        layout: Optional[str] = None,
        aug_smooth: Union[bool, Augment] = False,
        eigen_smooth: bool = False,
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        model, prefixes = unwrap(model)  # torch.compile / (Distributed)DataParallel: the wrapped module
        layer = strip_prefixes(layer, prefixes)
        quantized = quantized_layers(model)
        if quantized and (self.uses_gradients or (layer == "auto" and getattr(model, "default_layer", None) is None)):
            need = "its gradients" if self.uses_gradients else "gradients to choose layer='auto'"
            raise UnsupportedModelError(
                f"{type(self).__name__} needs {need}, and the model's quantised layers {quantized[:4]} have none "
                "in PyTorch (quantize_dynamic / quantize); explain the float model before quantising it, or use "
                "a gradient-free method ('scorecam', 'ablationcam', 'eigencam') with layer='NAME'"
            )
        layout = kind_of(layout)
        if layout is not None and reshape is not None:
            raise InputError("pass either layout= or reshape=, not both")
        self.model = model
        self.layer = layer
        self.eval_mode = eval_mode
        self.reshape = reshape
        self.layout = layout
        self.aug_smooth = augmentations(aug_smooth)
        self.eigen_smooth = bool(eigen_smooth)
        self.precision = parse_precision(precision)
        if not isinstance(channels_last, bool):
            raise InputError(f"channels_last must be True or False, got {channels_last!r}")
        self.channels_last = channels_last
        self._patch = patch_size(model)
        self._in_channels = first_conv_channels(model)
        self._model_dims = model_grid_dims(model)

    # -- context manager: hooks only live during a call, so there is nothing to hold open -------
    def __enter__(self) -> "BaseCAM":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer!r})"

    # -- public API --------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, targets: TargetSpec = None) -> torch.Tensor:
        """Maps ``(B, H, W)`` (``(B, K, H, W)`` for TopK/BottomK) in [0, 1] on ``x``'s device; for a clip or
        volume ``(B, C, T, H, W)``: ``(B, T, H, W)`` (``(B, K, T, H, W)``), normalised per clip."""
        return self.explain(x, targets).maps

    def explain(self, x: torch.Tensor, targets: TargetSpec = None) -> Explanation:
        """Compute the maps and everything behind them; see `Explanation`."""
        if self.aug_smooth is not None:
            if isinstance(x, torch.Tensor) and x.dim() == 5:
                raise InputError("aug_smooth flips and rescales images (B, C, H, W); it is not defined on clips and "
                                 "volumes (B, C, T, H, W): explain them without aug_smooth")
            return aug_explain(self, x, targets)
        x = self._check_input(x)
        # autograd on for target scores even under a caller's no_grad; the engine turns it off before the target
        with preserved(self.model, self.eval_mode), torch.enable_grad(), self._forward_mode(x), size_hint(self.model, x), \
                too_small(self.model, x):
            names, modules, p, region_of = self._run(x)
            t = resolve_targets(targets, p.logits, x.shape[0], p.logits_error, output=p.output)
            scores = t.scores(p.output, p.logits)
            check_finite(self.precision, scores, [])  # before a method spends time on them
            region = region_of()
            to_grid, acts = self._grids(p, names, modules, x, region)
            ctx = Context(self.model, x, p, t, scores, acts, modules, to_grid, region)
            raw, weights = eigen_compute(self, ctx) if self.eigen_smooth else self.compute(ctx)
        check_finite(self.precision, scores, raw)
        raw = [torch.relu(r) for r in raw]
        maps = finalize(raw, tuple(x.shape[2:]), ctx.region, self.fusion)
        squeeze = (lambda v: v[:, 0] if v is not None else None) if not t.keep_k else (lambda v: v)
        return Explanation(
            maps=squeeze(maps),
            raw=squeeze(raw[0]) if len(raw) == 1 else [squeeze(r) for r in raw],
            weights=None if weights is None else (squeeze(weights[0]) if len(weights) == 1 else [squeeze(w) for w in weights]),
            scores=squeeze(scores.detach()),
            targets=squeeze(t.indices),
            logits=None if p.logits is None else p.logits.detach(),
            layers=names,
            layout=[str(g) for g in to_grid],
            target=t.fn if t.indices is None else None,
            output=self.output,
            categories=self._categories(),
        )

    # -- what subclasses implement -------------------------------------------------------------------
    def compute(self, ctx: Context) -> Maps:
        """Per layer: raw map ``(B, K, *grid)`` (``grid`` ``(h, w)`` or ``(t, h, w)``) before ReLU, and
        weights ``(B, K, C)`` or None."""
        raise NotImplementedError

    def contributions(self, ctx: Context) -> Maps:
        """Per layer: the per-channel terms ``(B, K, C, h, w)`` whose channel sum is the raw map (what
        ``eigen_smooth`` projects), and the weights. Default: ``w_c A_c`` from `compute`'s weights."""
        return channel_contributions(self.compute(ctx), ctx.acts, type(self).__name__)

    def _forward(self, x: torch.Tensor, modules: list[nn.Module], names: list[str]) -> engine.Pass:
        """The explained forward pass; a hook point for methods that observe more of it (Ablation-CAM)."""
        return engine.forward(self.model, x, modules, names, record=self.uses_gradients)

    # -- helpers -----------------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor) -> tuple[list[str], list[nn.Module], engine.Pass, Callable[[], Optional[InputRegion]]]:
        """The explained layers and forward pass, and the input frame recorded during it (call it after)."""
        names, modules = self._layers(x)
        with input_region(self.model) as region_of:
            p = self._forward(x, modules, names)
        return names, modules, p, region_of

    def _grids(self, p: engine.Pass, names: list[str], modules: list[nn.Module], x: torch.Tensor,
               region: Optional[InputRegion]) -> tuple[list[Layout], list[torch.Tensor]]:
        """How each captured output reads as a grid, and the detached float32 grids ``(B, C, *grid)``."""
        to_grid = [self._read(a, n, m, x, region) for a, n, m in zip(p.acts, names, modules)]
        return to_grid, [f(a.detach()).float() for f, a in zip(to_grid, p.acts)]

    def _categories(self) -> Optional[list[str]]:
        """The model's class names (``model.categories``, set by camkit's zoo and loaders), else None."""
        names = getattr(self.model, "categories", None)
        return list(names) if isinstance(names, (list, tuple)) and names else None

    def _forward_mode(self, x: torch.Tensor) -> Any:
        """Context in which the model's calls run at ``precision`` / ``channels_last``."""
        return model_forward(self.model, self.precision, self.channels_last, x.device)

    def _check_input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"input must be a torch.Tensor of shape (B, C, H, W) (a clip or volume: "
                             f"(B, C, T, H, W)), got {type(x).__name__}")
        want = {2: "(B, C, H, W)", 3: "(B, C, T, H, W)"}
        if x.dim() not in (4, 5):
            hint = " (add a batch dimension: x.unsqueeze(0))" if x.dim() in (3, 4) else ""
            raise InputError(f"input must have shape (B, C, H, W) (images) or (B, C, T, H, W) (clips, volumes), "
                             f"got {tuple(x.shape)}{hint}")
        d = x.dim() - 2
        if self._model_dims is not None and d != self._model_dims:
            kind = "clips / volumes" if self._model_dims == 3 else "images"
            hint = (" (a batch of one clip? add the batch dimension: x.unsqueeze(0))" if self._model_dims == 3 else
                    " (explain the frames one by one as images, e.g. x[:, :, t], or use a video / volume model)")
            raise InputError(
                f"{type(self.model).__name__} takes {kind} {want[self._model_dims]} (its structure is "
                f"{self._model_dims}-D: {'3-D convolutions' if self._model_dims == 3 else '2-D convolutions'}), "
                f"got a {x.dim()}-D input {tuple(x.shape)}{hint}"
            )
        if d not in self.grid_dims:
            note = f": {self.grid_note}" if self.grid_note else ""
            raise InputError(
                f"{type(self).__name__} is defined on {' and '.join(want[g] for g in self.grid_dims)} inputs only "
                f"(its grid_dims are {self.grid_dims}){note}; got {tuple(x.shape)}. Methods with 3 in grid_dims "
                "(e.g. GradCAM) explain clips and volumes"
            )
        if not x.is_floating_point():
            raise InputError(f"input must be a floating-point tensor, got {x.dtype} (try x.float() / 255)")
        if self._in_channels is not None and x.shape[1] != self._in_channels:
            raise InputError(
                f"the model's first convolution expects {self._in_channels} channels, got input of shape "
                f"{tuple(x.shape)} with {x.shape[1]}"
            )
        if x.shape[0] == 0:
            raise InputError("input batch is empty")
        x = self._match_dtype(x)
        if not torch.isfinite(x).all():
            nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
            bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
            raise InputError(
                f"input holds {nan} NaN and {inf} infinite value(s) (image(s) {bad[:8]} of the batch): the model's "
                "scores and every map would be meaningless; fix the preprocessing (a division by a zero std?) "
                "or replace them, e.g. torch.nan_to_num(x)"
            )
        if torch.is_inference_mode_enabled() and self.uses_gradients:
            raise CamkitError(
                f"{type(self).__name__} needs autograd, which torch.inference_mode() disables; call it "
                "outside inference_mode (a surrounding torch.no_grad() is fine)"
            )
        if x.is_inference():
            x = x.clone()  # outside inference mode a clone is a normal tensor
        return x.detach()

    def _match_dtype(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` cast, with a warning, to the floating dtype of the model's parameters when they all share
        one that differs (a float64 or float16 image for a float32 model is otherwise a raw RuntimeError)."""
        dtypes = {t.dtype for t in self.model.parameters() if t.is_floating_point()}
        if len(dtypes) != 1 or x.dtype in dtypes:
            return x
        (dtype,) = dtypes
        warnings.warn(
            f"input is {x.dtype} but the model's parameters are {dtype}: the input was cast to {dtype} (pass "
            f"x.to({dtype}) to silence this, or convert the model, model.to({x.dtype}), to explain in {x.dtype})",
            stacklevel=4)
        return x.to(dtype)

    def _read(self, a: torch.Tensor, name: str, module: nn.Module, x: torch.Tensor,
              region: Optional[InputRegion] = None) -> Layout:
        """How to read layer ``name``'s output ``a`` as ``(B, C, h, w)`` (see `camkit.layers.read_layer`)."""
        return read_layer(self.model, module, name, a, x, self._patch, self.layout, self.reshape, region)

    def _layers(self, x: torch.Tensor) -> tuple[list[str], list[nn.Module]]:
        pairs = choose_layers(self.model, self.layer, x)
        return [n for n, _ in pairs], [m for _, m in pairs]


def __getattr__(name: str) -> Any:  # deprecated aliases of names that moved (removed in 0.3.0)
    if name == "auto_layer":
        import warnings

        from ..layers import auto_layer

        warnings.warn("camkit.methods.base.auto_layer moved to camkit.layers.auto_layer; the old name goes "
                      "away in camkit 0.3.0", DeprecationWarning, stacklevel=2)
        return auto_layer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
