"""What a benchmark run measures and how: `BenchConfig` and its `Protocol`.

Everything here is plain data (JSON round trip via `BenchConfig.to_dict` /
`BenchConfig.from_dict`), so a run directory's ``run.json`` says exactly how its numbers
were made and a remote worker can rebuild the configuration.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import CamkitError
from ..metrics import check_percentiles

#: target kinds of the records: the predicted class, the least predicted class, the true class
#: (only when it differs from the predicted one, i.e. for misclassified images).
TARGET_KINDS: tuple[str, ...] = ("top1", "least", "true")
"""What a bench explains per image: the predicted class, the least predicted one and, when the
prediction is wrong, the true class."""
BASELINE_PREFIX = "baseline:"
BASELINES: tuple[str, ...] = ("uniform", "center_gaussian", "random")
"""The baseline maps in every table, as `baseline:NAME` rows (`camkit.metrics.BASELINES`)."""


@dataclass(frozen=True)
class Protocol:
    """The conventions behind every number of a run (printed in the report, stored in each record).

    Localisation: the map's box is the largest connected component of ``map >= threshold * max``;
    IoU with the best-matching ground-truth box; MaxBoxAcc over ``box_thresholds`` thresholds at
    IoU >= ``maxboxacc_iou``; pointing game with ``pointing_tolerance`` pixels. Average Drop /
    Increase in Confidence: softmax of the explained class on the image and on image x map
    (``space``). Deletion (``deletion_substrate``) / Insertion (``insertion_substrate``) AUC with
    ``perturbation_steps`` steps, for the target kinds in ``perturbation_kinds``. ``precision`` /
    ``channels_last``: how the methods run the model's forward (maps stay float32; the metrics'
    own forwards run in float32).
    """

    threshold: float = 0.15
    box_thresholds: int = 100
    maxboxacc_iou: float = 0.5
    pointing_tolerance: float = 0.0
    space: str = "pixel"
    score: str = "softmax"
    perturbation_steps: int = 32
    perturbation_kinds: tuple[str, ...] = ("top1",)
    deletion_substrate: str = "zeros"
    insertion_substrate: str = "blur"
    baselines: tuple[str, ...] = BASELINES
    seed: int = 0
    #: model-randomisation sanity check: rank correlation of each top-1 map with the map of the same
    #: class on a copy of the model whose parameters are all re-initialised (Adebayo et al. 2018)
    sanity: bool = True
    #: ROAD combined (Rong et al. 2022) for the target kinds of ``perturbation_kinds``: percent of
    #: pixels removed (pytorch-grad-cam's ARCC set; the paper's 10..90 cost 2.25x more), imputation noise
    road: bool = True
    road_percentiles: tuple[float, ...] = (20.0, 40.0, 60.0, 80.0)
    road_noise: float = 0.01
    #: ARCC (complexity, coherency, ROAD; harmonic mean) of the top-1 maps: one more map per image
    arcc: bool = True
    #: keyword options per method, e.g. ``{"scorecam": {"batch_size": 64}}``
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the methods' model forward: "fp32", or "bf16" / "fp16" autocast; channels-last memory format
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16") or not isinstance(self.channels_last, bool):
            raise CamkitError(f"precision must be 'fp32', 'bf16' or 'fp16' and channels_last a bool, got "
                              f"{self.precision!r}, {self.channels_last!r}")
        if self.road:
            check_percentiles(self.road_percentiles, "road_percentiles")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Protocol":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CamkitError(f"unknown protocol fields {unknown}; known: {sorted(known)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def fingerprint(self) -> str:
        """A short hash: runs with equal fingerprints computed their numbers the same way."""
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def describe(self) -> list[str]:
        """One line per metric family: the conventions it used."""
        thr = self.box_thresholds
        return [
            f"Localisation: box = largest 8-connected component of map >= {self.threshold} x max(map); "
            "IoU with the best-matching ground-truth box (Selvaraju et al. 2017).",
            f"MaxBoxAcc: share of images with IoU >= {self.maxboxacc_iou} at the best of {thr} thresholds "
            "0, 1/T, ... (Choe et al. 2020).",
            f"Pointing game: map maximum within {self.pointing_tolerance} px of a box, ties shared "
            "(Zhang et al. 2016); energy pointing game: share of map energy inside the boxes (Wang et al. 2020).",
            f"Average Drop % = mean max(0, Y-O)/Y x 100, Increase in Confidence % = share of O > Y x 100; "
            f"Y, O = {self.score} of the explained class on the image and on image x map ({self.space} space) "
            "(Chattopadhyay et al. 2018).",
            f"Deletion / Insertion AUC: {self.perturbation_steps} steps, deletion substrate "
            f"{self.deletion_substrate!r}, insertion substrate {self.insertion_substrate!r}, {self.score} "
            f"score, for target kinds {list(self.perturbation_kinds)} (Petsiuk et al. 2018).",
            (f"ROAD combined: mean over {list(self.road_percentiles)} % of pixels removed of (LeRF - MoRF) / 2, "
             f"{self.score} score, removed pixels imputed from their 8 neighbours + N(0, {self.road_noise}^2) noise "
             f"(seed {self.seed}), for target kinds {list(self.perturbation_kinds)} (Rong et al. 2022)."
             if self.road else "ROAD: off."),
            ("ARCC: harmonic mean of coherency ((Pearson(map, map of image x map) + 1) / 2), 1 - complexity "
             "(mean of the map) and clip(2 x ROAD combined, 0, 1), top-1 maps (arXiv 2605.14641)."
             if self.arcc and self.road else "ARCC: off."),
            f"Baselines: {', '.join(self.baselines)} maps (random: seeded per image from seed {self.seed}).",
            (f"Sanity: Spearman rank correlation of each top-1 map with the map of the same class on a copy of "
             f"the model with every parameter re-initialised (seed {self.seed + 1000}); a map that ignores the model "
             "scores 1 (Adebayo et al. 2018)." if self.sanity else "Sanity check: off."),
            "Method options: " + (json.dumps(self.method_options, sort_keys=True) if self.method_options else "defaults"),
            f"Methods' model forward: {self.precision}" + (" autocast" if self.precision != "fp32" else "")
            + (", channels-last" if self.channels_last else "") + "; maps and metrics in float32.",
        ]


@dataclass(frozen=True)
class BenchConfig:
    """Models x methods x data, batch size, device and the `Protocol`.

    ``models``: zoo names, optionally ``name=weights`` (a named weights set, ``random``, or a path).
    ``methods``: registry names (guided methods are not maps; they appear in the Guided Grad-CAM
    figure). ``data``: ``samples``, ``digits[:N]``, ``moving_digits[:N]``, ``digit_volumes[:N]``, ``imagenet:PATH`` or ``folder:PATH``.
    ``gallery_images``: images (by dataset index) whose overlays are kept for the report's galleries;
    misclassified images up to ``4 * gallery_images`` are kept too. ``figure_images``: images of the
    layer-by-layer and Guided Grad-CAM figures; ``curve_images``: how many of them the cascading
    randomisation curve averages over (default: all; each costs one map per method and model block).
    """

    models: tuple[str, ...]
    methods: tuple[str, ...]
    data: str = "digits"
    limit: Optional[int] = None
    batch_size: int = 8
    device: str = "cpu"
    protocol: Protocol = field(default_factory=Protocol)
    gallery_images: int = 12
    figure_images: int = 3
    layers_per_figure: int = 4
    curve_images: Optional[int] = None
    note: str = ""  # shown with the tables (e.g. what a run left out and why)

    def __post_init__(self) -> None:
        if not self.models:
            raise CamkitError("no models given")
        if not self.methods:
            raise CamkitError("no methods given")
        if self.batch_size < 1:
            raise CamkitError(f"batch size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise CamkitError(f"limit must be >= 1, got {self.limit}")
        if self.curve_images is not None and self.curve_images < 1:
            raise CamkitError(f"curve_images must be >= 1 (or None: every figure image), got {self.curve_images}")

    def to_dict(self) -> dict[str, Any]:
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        d["protocol"] = self.protocol.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchConfig":
        d = dict(d)
        proto = Protocol.from_dict(d.pop("protocol", {}))
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(protocol=proto, **kw)

    def fingerprint(self) -> str:
        """What must not change when a run is resumed: data, batch size and protocol."""
        blob = json.dumps([self.data, self.batch_size, self.protocol.as_dict(), self.gallery_images,
                           self.figure_images, self.layers_per_figure], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
