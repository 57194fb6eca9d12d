"""Mechanics at the bottom of camkit: running a model for one call, and the small pieces every
method shares. Imports nothing of camkit but :mod:`camkit.errors`.

Modules, one idea each: :mod:`.engine` (one forward that captures the target layers' outputs and
records autograd only after them; gradients of the scores), :mod:`.hooks` (hooks and replaced
forwards that act only for the call that installed them), :mod:`.state` (the user's model left as
found: training flags, ``requires_grad``, ``.grad``, hooks), :mod:`.precision` (autocast and
channels-last for the forward, everything else float32), :mod:`.outputs` (whatever a model returns
-> logits), :mod:`.region` (where the input lies in a layer's grid when a model resizes and pads
inside), :mod:`.pixels` (the [0, 1] pixel-range check of zoo models), :mod:`.postprocess`
(upsampling and per-map min-max normalisation), :mod:`.keys` (one tensor of a container output,
``"name[key]"``).
"""
