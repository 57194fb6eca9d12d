"""Ablation-CAM: one method, the machinery it alone uses beside it.

Modules: `.method` (`AblationCAM`: weights from the score drop when a channel is
zeroed), `.replay` (re-running only the part of the model after the layer, on call-scoped
hooks; SESS's fast mode replays windows with it too), `.affine` (is the tail affine in the layer? decided op by op while it runs),
`.closed_form` (all channels from one backward when it is).
"""
from .method import AblationCAM

__all__ = ["AblationCAM"]
