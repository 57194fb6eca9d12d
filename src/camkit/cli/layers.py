"""``camkit layers MODEL``: every layer of a model with its output shape, how camkit reads it as a feature
map (or why it does not), and the layer ``layer="auto"`` explains, with the reason.

One traced forward of a random image at ``--size`` (default: the model's input size;
`camkit.layers.trace.trace`) gives each module call's output shape. Each output is read from
its shape (`camkit.layers.readings`) and that forward's evidence (`camkit.layers.probe`:
attention internals, MLP hidden widths, modules called more than once), the same evidence
``layer="auto"`` uses. The auto layer is then read in full (`camkit.layers.read_layer`: a
reading that shape leaves open is settled at a second input size, token grids are checked to be in
raster order), as ``camkit explain`` reads any layer it is given.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

import torch
from torch import nn

from camkit.bench import sources
from camkit.core.region import input_region
from camkit.errors import CamkitError
from camkit.core.region import InputRegion
from camkit.layers import choose_layers, first_conv_channels, model_task, read_layer, readings, task_layer
from camkit.layers.names import POOLING
from camkit.layers.probe import Probe, grid_key, summarise
from camkit.layers.trace import ModuleCall, trace

from .common import add_device_options, model_spec


def add_parser(sub: Any) -> None:
    """Register ``camkit layers`` on the subcommands ``sub``."""
    ly = sub.add_parser("layers", help="a model's layers: output shapes, how each is read, the automatic choice",
                        description="List every layer of MODEL with its output shape on one input, how camkit reads "
                        "it as a feature map (or why not), and the layer explained when --layer is left out.")
    ly.add_argument("model", metavar="MODEL", help="zoo model name, timm:NAME, hf:DIR or torchvision:NAME (camkit list)")
    ly.add_argument("--weights", default=None, help="state-dict path, a named weights set, or 'random' (shapes do not "
                    "depend on it; the automatic choice can)")
    ly.add_argument("--size", nargs="+", type=int, default=None, metavar="N",
                    help="input height and width, or frames (depth), height and width for video / volume models "
                    "(default: the model's input size, else 224 224)")
    add_device_options(ly)
    ly.set_defaults(func=cmd_layers)


def reading(call: ModuleCall, p: Probe) -> str:
    """How ``camkit explain --layer NAME`` would read this call's output, or why it would refuse it."""
    if call.shape is None:
        return ("several tensors (a tuple or dict): explain one as NAME[KEY]" if call.shapes
                else "no floating-point tensor")
    if p.counts[id(call.module)] > 1:
        return f"refused: called {p.counts[id(call.module)]} times in one forward"
    if call.internal:
        return "refused: computed inside an attention block (queries, keys, values, heads)"
    options = readings(torch.empty(call.shape, device="meta"), 1, p.input_hw, p.patch)
    if not options:
        return "refused: not a grid of the input (no feature map)"
    if p.hidden(call, options[0]):
        widths = sorted(p.stream.get(grid_key(call.shape, options[0]), set()))
        return f"refused: width {call.shape[-1]} is not the residual stream's {widths} (an MLP hidden layer)"
    text = str(options[0])
    if len(options) > 1 and options[0].kind != options[1].kind:
        text = f"{options[0]} or {options[1]} (settled when explained, or forced with --layout)"
    return text + (" (pooling: never the automatic choice)" if isinstance(call.module, POOLING) else "")


def _why(model: nn.Module) -> str:
    """Why ``layer="auto"`` picks what it picks on ``model`` (see `camkit.layers.choose_layers`)."""
    preset = getattr(model, "default_layer", None)
    try:
        task = task_layer(model)
    except CamkitError:
        task = None
    if task is not None and preset in (None, "", task):
        return f"a {model_task(model)} model: the backbone's last feature map, the one its heads read"
    rule = "the last feature map on whose grid the top-1 score depends (not pooling, not the prediction itself)"
    if preset:
        return (f"the model's default layer, set when camkit built or loaded it (for timm:, hf: and torchvision: "
                f"classifiers: {rule}, found on one probe image)")
    return rule


def _auto(model: nn.Module, x: torch.Tensor, calls: list[ModuleCall], p: Probe, region: Optional[InputRegion]) -> str:
    """The automatic choice, its full reading and why; or why there is none."""
    try:
        chosen = choose_layers(model, "auto", x)
        parts = []
        for name, module in chosen:
            out = next((c.out for c in calls if c.module is module and c.out is not None), None)
            how = "?" if out is None else str(read_layer(model, module, name, out, x, p.patch, region=region))
            parts.append(f"{name} ({how})")
    except CamkitError as exc:
        return f"none: {exc}"
    return f"{', '.join(parts)}: {_why(model)}"


def cmd_layers(args: argparse.Namespace) -> int:
    """``camkit layers``: one line per layer, then the automatic choice."""
    model = sources.load_model(model_spec(args), args.device)
    size = tuple(args.size) if args.size else tuple(getattr(model, "input_size", None) or (224, 224))
    if len(size) not in (2, 3) or min(size) < 1:
        raise CamkitError(f"--size takes a height and a width >= 1 (video / volume models: frames, height and "
                          f"width), got {' '.join(map(str, size))}")
    channels = first_conv_channels(model) or 3
    x = torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(0)).to(args.device)
    with torch.no_grad(), input_region(model) as region_of:
        calls, _ = trace(model, x)
    region = region_of()
    p = summarise(model, calls, region.padded if region is not None else size)
    rows = [(c.name, type(c.module).__name__, _output(c), reading(c, p)) for c in _first_calls(calls)]
    widths = [max(len(r[i]) for r in rows + [("layer", "type", "output", "")]) for i in range(3)]
    where = "" if region is None else f" (resized inside to {region.padded[0]}x{region.padded[1]})"
    print(f"{args.model}: {len(rows)} layers on a 1x{channels}x{'x'.join(map(str, size))} input{where}")
    for row in [("layer", "type", "output", "read as")] + rows:
        print("  ".join(v.ljust(w) for v, w in zip(row[:3], widths)) + "  " + row[3])
    print(f"auto (--layer left out): {_auto(model, x, calls, p, region)}")
    return 0


def _output(call: ModuleCall) -> str:
    """The output shape; for a tuple or dict, its tensors' shapes; ``-`` without a float tensor."""
    if call.shape is not None:
        return str(tuple(call.shape))
    shown = " ".join(str(tuple(s)) for s in call.shapes[:3])
    return shown + (f" +{len(call.shapes) - 3} more" if len(call.shapes) > 3 else "") or "-"


def _first_calls(calls: list[ModuleCall]) -> list[ModuleCall]:
    """Each module's first call, a block before the calls inside it (the order of ``named_modules``);
    the model itself left out. ``calls`` are in the order they ended (children first)."""
    children: dict[int, list[ModuleCall]] = {}
    for c in calls:
        children.setdefault(id(c.parent), []).append(c)
    out: list[ModuleCall] = []
    seen: set[int] = set()
    todo = list(reversed(children.get(id(None), [])))
    while todo:
        c = todo.pop()
        if c.parent is not None and id(c.module) not in seen:
            seen.add(id(c.module))
            out.append(c)
        todo.extend(reversed(children.get(id(c), [])))
    return out
