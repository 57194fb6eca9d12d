"""Mechanics at the bottom of camkit: running a model for one call, and the small pieces every
method shares. Imports nothing of camkit but `camkit.errors`.

Modules, one idea each: `.engine` (one forward that captures the target layers' outputs and
records autograd only after them; gradients of the scores), `.hooks` (hooks and replaced
forwards that act only for the call that installed them), `.state` (the user's model left as
found: training flags, ``requires_grad``, ``.grad``, hooks), `.precision` (autocast and
channels-last for the forward, everything else float32), `.outputs` (whatever a model returns
-> logits), `.region` (where the input lies in a layer's grid when a model resizes and pads
inside), `.pixels` (the [0, 1] pixel-range check of zoo models), `.postprocess`
(upsampling and per-map min-max normalisation), `.keys` (one tensor of a container output,
``"name[key]"``).
"""
