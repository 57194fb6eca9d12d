"""Evaluation metrics for explanation maps, with every convention an explicit, printable parameter.

* `.localization` — box from a map, IoU, MaxBoxAcc, Pointing Game, Energy-based Pointing Game, mask IoU
  (images, and clips / volumes with ``spatial_dims=3``)
* `.faithfulness` — Average Drop %, Increase in Confidence %, Deletion / Insertion AUC (pixels or voxels)
* `.remove_debias` — ROAD (Remove And Debias): noisy linear imputation, MoRF / LeRF curves, ROAD combined
* `.arcc` — ARCC: complexity, coherency (re-runs the method) and ROAD, harmonic mean
* `.sanity` — cascading model-parameter randomisation (Spearman ρ, SSIM)
* `.baselines` — uniform, centre-Gaussian and random maps for every table
* `.protocol` — the ``Protocol`` records whose ``describe()`` a report prints with each number
* `.similarity` — Spearman rank correlation and SSIM between maps
* `._checks`, `._forward` — input validation and model plumbing shared by the above
"""
from ._checks import BoxClippedWarning
from .arcc import ARCC_PERCENTILES, ARCCProtocol, ARCCResult, arcc, coherency, complexity, harmonic_arcc
from .baselines import BASELINES, baseline_maps, center_gaussian_map, random_map, uniform_map
from .faithfulness import (
    ConfidenceChange,
    ConfidenceProtocol,
    PerturbationCurve,
    PerturbationProtocol,
    average_drop,
    average_drop_from_scores,
    confidence_change,
    deletion_auc,
    gaussian_blur,
    increase_in_confidence,
    increase_in_confidence_from_scores,
    insertion_auc,
)
from .localization import (
    DEFAULT_THRESHOLDS,
    LocalizationProtocol,
    MaxBoxAccResult,
    box_from_map,
    box_iou,
    energy_pointing_game,
    localization_iou,
    mask_energy,
    mask_iou,
    mask_pointing_game,
    max_box_acc,
    max_box_acc_from_ious,
    pointing_game,
    threshold_ious,
    threshold_mask_ious,
)
from .protocol import Protocol
from .remove_debias import ROAD_PERCENTILES, ROADProtocol, ROADResult, check_percentiles, noisy_linear_imputation, road
from .sanity import (
    RandomizationProtocol,
    RandomizationResult,
    default_randomization_layers,
    randomization_test,
    reinitialize_,
)
from .similarity import spearman_correlation, ssim

__all__ = [
    "ARCC_PERCENTILES",
    "ARCCProtocol",
    "ARCCResult",
    "arcc",
    "coherency",
    "complexity",
    "BASELINES",
    "DEFAULT_THRESHOLDS",
    "ROAD_PERCENTILES",
    "ROADProtocol",
    "ROADResult",
    "BoxClippedWarning",
    "ConfidenceChange",
    "ConfidenceProtocol",
    "LocalizationProtocol",
    "MaxBoxAccResult",
    "PerturbationCurve",
    "PerturbationProtocol",
    "Protocol",
    "RandomizationProtocol",
    "RandomizationResult",
    "average_drop",
    "average_drop_from_scores",
    "baseline_maps",
    "box_from_map",
    "box_iou",
    "center_gaussian_map",
    "check_percentiles",
    "confidence_change",
    "default_randomization_layers",
    "deletion_auc",
    "energy_pointing_game",
    "gaussian_blur",
    "harmonic_arcc",
    "increase_in_confidence",
    "increase_in_confidence_from_scores",
    "insertion_auc",
    "localization_iou",
    "mask_energy",
    "mask_iou",
    "mask_pointing_game",
    "noisy_linear_imputation",
    "max_box_acc",
    "max_box_acc_from_ious",
    "pointing_game",
    "random_map",
    "randomization_test",
    "reinitialize_",
    "road",
    "spearman_correlation",
    "ssim",
    "threshold_ious",
    "threshold_mask_ious",
    "uniform_map",
]
