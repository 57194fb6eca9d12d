"""``camkit demo``: the benchmark on what ships with the installation, offline.

Two runs into one directory: ``photos/`` -- EfficientNet-Lite0 with its real ImageNet weights on the
bundled photos -- and ``digits/`` -- the three bundled digits models (ResNet-, VGG- and ViT-style)
on a generated test split with exact boxes, the survey's three-model comparison (the cascading
randomisation curve averages one photo, 3 digits images: EfficientNet-Lite0 has 21 blocks, and
Ablation-CAM and Smooth Grad-CAM++ cost seconds per map there). ``index.html``
links both reports; ``table.md`` holds both tables. Sizes are chosen to finish in minutes on a
2-core CPU; they are recorded in each report's protocol.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import BenchConfig, Protocol
from .plan import LEFT_OUT, select_methods
from .session import BenchResult, run_bench

DIGITS_MODELS = ("digits_resnet", "digits_vgg", "digits_vit")
PHOTO_MODELS = ("efficientnet_lite0",)


@dataclass(frozen=True)
class DemoPart:
    """One run of the demo."""

    name: str
    title: str
    config: BenchConfig


def demo_parts(digits_images: int = 48, include_expensive: bool = False) -> list[DemoPart]:
    """The demo's two runs, with the methods ``camkit bench --methods all`` runs: the ``expensive`` ones
    (e.g. Score-CAM: one forward pass per channel of the layer, 1280 on EfficientNet-Lite0) only with
    ``include_expensive``; the methods the classification tables cannot hold (DFF, Seg-Eigen-CAM, the
    guided attributions) never. Each report's note says which were left out and why. ROAD on the
    224 x 224 photos at 3 percentiles (its imputation solves 6 sparse systems of up to 35k unknowns per
    map), on the digits at the bench's 4."""
    methods, left_out = select_methods("all", include_expensive)
    note = (LEFT_OUT + "; ".join(left_out)) if left_out else ""
    return [
        DemoPart("photos", "EfficientNet-Lite0 (ImageNet weights) on the bundled photos", BenchConfig(
            models=PHOTO_MODELS, methods=methods, data="samples", batch_size=8, gallery_images=8,
            figure_images=3, curve_images=1, note=note,
            protocol=Protocol(perturbation_steps=8, road_percentiles=(30.0, 50.0, 70.0)),  # 224²: imputation costs
        )),
        DemoPart("digits", f"Digits ResNet / VGG / ViT on {digits_images} generated test images", BenchConfig(
            models=DIGITS_MODELS, methods=methods, data=f"digits:{digits_images}", batch_size=16,
            gallery_images=8, figure_images=3, protocol=Protocol(perturbation_steps=16), note=note,
        )),
    ]


@dataclass(frozen=True)
class DemoResult:
    """``index.html`` and each part's `BenchResult`."""

    index: Path
    results: list[BenchResult]


def run_demo(out_dir: str | os.PathLike[str] = "camkit-demo", *, progress: bool = True, resume: bool = True,
             parts: Optional[list[DemoPart]] = None) -> DemoResult:
    """Run every part into ``out_dir/<part>``, then write ``index.html`` and ``table.md`` linking them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = parts if parts is not None else demo_parts()
    tables, links, results, rule = [], [], [], ""
    for part in parts:
        result = run_bench(part.config, out / part.name, resume=resume, progress=progress)
        results.append(result)
        body = result.table.read_text(encoding="utf-8").split("\n", 1)[1].lstrip("\n")  # its own title replaced
        tables.append(f"# {part.title}\n\n{body}")
        verdict = "".join(f"<li>{html.escape(line)}</li>" for line in result.summary.verdict[:-1])
        links.append(f'<li><a href="{html.escape(part.name)}/report.html">{html.escape(part.title)}</a>'
                     f" -- {result.seconds:.0f} s<br>Which map to trust:<ul>{verdict}</ul></li>")
        rule = result.summary.verdict[-1] if result.summary.verdict else ""
    (out / "table.md").write_text("\n".join(tables), encoding="utf-8")
    index = out / "index.html"
    index.write_text("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>camkit demo</title></head>"
                     "<body style='font-family:system-ui,sans-serif'><h1>camkit demo: which map to trust</h1><ul>"
                     + "".join(links) + f"</ul><p style='font-size:13px'>{html.escape(rule)}</p>"
                     "<p>Tables of both runs: <a href='table.md'>table.md</a></p></body></html>",
                     encoding="utf-8")
    return DemoResult(index, results)
