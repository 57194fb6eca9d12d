"""Which layer to explain and how to read its output: below methods and models, above core.

Modules, one idea each: `.names` (a layer by dotted name, module or list; ``name[key]``
addresses one tensor of a container output), `.layout` (reading an output's shape as a
feature grid: NCHW, channels-last, tokens with prefixes), `.trace` (one traced forward: every
module call, attention blocks marked), `.probe` (what that trace says, cached per model and
input size), `.reading` (one layer's output read from shape and evidence, or a clear
refusal), `.auto` (``layer="auto"``: the layer an expert explains), `.presets` (the task
of a model and the layer of detectors' and segmenters' backbones), `.stages` (the last feature
map at each finer grid before a layer: RefineCAM's layers), `.attention` (a vision transformer's
blocks, their attention probabilities for one call, its head on tokens: LeGrad's), `.wrappers`
(`torch.compile` / DataParallel / DDP explained through the wrapped module; quantised layers).
"""
from .auto import auto_layer, choose_layers
from .layout import ALIASES, KINDS, Layout, first_conv_channels, kind_of, model_grid_dims, patch_size, readings
from .names import LayerSpec, find_layer, module_name, resolve_layers
from .presets import model_task, task_layer
from .reading import read_layer
from .stages import stage_layers
from .wrappers import quantized_layers, strip_prefixes, unwrap

__all__ = [
    "auto_layer", "choose_layers", "KINDS", "ALIASES", "Layout", "patch_size", "readings", "kind_of",
    "model_grid_dims", "first_conv_channels", "LayerSpec", "find_layer",
    "module_name", "resolve_layers", "model_task", "task_layer", "read_layer", "stage_layers",
    "quantized_layers", "strip_prefixes", "unwrap",
]
