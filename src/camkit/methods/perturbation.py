"""Deprecated module path (removed in camkit 0.3.0): Ablation-CAM moved to `camkit.methods.ablation`
and Score-CAM to `camkit.methods.scorecam`; ``camkit.AblationCAM`` and ``camkit.ScoreCAM`` are unchanged."""
import warnings

from .ablation import AblationCAM
from .scorecam import ScoreCAM

warnings.warn("camkit.methods.perturbation is deprecated: import AblationCAM and ScoreCAM from camkit (or "
              "camkit.methods.ablation / camkit.methods.scorecam); the old path goes away in camkit 0.3.0",
              DeprecationWarning, stacklevel=2)

__all__ = ["AblationCAM", "ScoreCAM"]
