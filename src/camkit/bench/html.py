"""``report.html``: one self-contained page (no network; pictures are files beside it) with the
tables, the figures and the galleries of the survey (Tables 2-7).

Every string that comes from data -- image ids and file names, class names, model specs, paths,
error messages -- goes through `html.escape`, so a file named ``<script>...</script>.png``
shows as text.
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .evidence import PAIRWISE_METRICS, is_baseline
from .report import LEGEND, Column, Summary, column_n, fmt, identical_lines, interval_text, row_label
from .sources import model_label, random_weights, random_weights_warning

Record = dict[str, Any]
GALLERY_ROWS = 8

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1500px}
.scroll{max-width:100%;overflow-x:auto}
.verdict{border:2px solid #1b5e20;background:#f1f8e9;padding:.4em 1em;margin:1em 0}
.verdict.none{border-color:#a00;background:#fff5f5}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:center;vertical-align:middle}
th{background:#f2f2f2}td.l,th.l{text-align:left}
.best{font-weight:bold;background:#e8f5e9}
img.t{width:112px;height:auto;display:block;margin:auto}
figure{margin:1em 0}figcaption{font-size:13px;color:#555;max-width:900px}
.small{font-size:12px;color:#555}.err{color:#a00}
.ci{font-size:11px;color:#555;white-space:nowrap}.sig{color:#1b5e20;font-weight:bold}
td.win{background:#e8f5e9}td.loss{background:#fdecea}
"""


@dataclass(frozen=True)
class FigureRef:
    """A figure file (relative to the report) with its title and caption."""

    title: str
    path: str
    caption: str


def _scroll(table: str) -> str:
    """A table in a box as wide as the page that scrolls sideways: wide tables never widen the page."""
    return f'<div class="scroll">{table}</div>'


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(path: Optional[str], alt: str) -> str:
    if not path:
        return '<span class="small">—</span>'
    return f'<img class="t" src="{esc(path)}" alt="{esc(alt)}" loading="lazy">'


def _best(s: Summary, col: Column, model: str) -> Optional[float]:
    vals = [s.values[(col.key, model, m)] for m in s.methods if not is_baseline(m)]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return max(vals) if col.better == "higher" else min(vals)


def _metric_cell(s: Summary, c: Column, m: str, method: str, best: Optional[float]) -> str:
    v = s.values[(c.key, m, method)]
    text = "n/a" if v is None and (m, method) in s.errors else fmt(v, c.decimals)
    cls = ' class="best"' if v is not None and v == best and not is_baseline(method) else ""
    title = f' title="{esc(s.errors[(m, method)])}"' if (m, method) in s.errors else ""
    iv = s.intervals.get((c.key, m, method))
    extra = ""
    if iv is not None:
        fewer = f" n={iv.n}" if iv.n < column_n(s, c, m) else ""
        extra = f'<br><span class="ci">{esc(interval_text(iv, c.decimals) + fewer)}</span>'
    mark = '<span class="sig">*</span>' if s.beats_baselines(c.key, m, method) else ""
    return f"<td{cls}{title}>{esc(text)}{mark}{extra}</td>"


def metric_table(s: Summary, cols: Sequence[Column]) -> str:
    """Rows = methods, column groups = metrics, one column per model; each value with its interval;
    the best method per column in bold, * where a method beats every baseline significantly."""
    top = '<tr><th class="l" rowspan="2">Method</th>' + "".join(
        f'<th colspan="{len(s.models)}">{esc(c.label)} {"↑" if c.better == "higher" else "↓"}</th>' for c in cols) + "</tr>"
    sub = "<tr>" + "".join(f"<th>{esc(model_label(m))}</th>" for _ in cols for m in s.models) + "</tr>"
    count = '<tr><td class="l small">n (images)</td>' + "".join(
        f'<td class="small">{column_n(s, c, m)}</td>' for c in cols for m in s.models) + "</tr>"
    best = {(c.key, m): _best(s, c, m) for c in cols for m in s.models}
    rows = [f'<tr><td class="l">{esc(row_label(s, method))}</td>'
            + "".join(_metric_cell(s, c, m, method, best[(c.key, m)]) for c in cols for m in s.models) + "</tr>"
            for method in s.methods]
    return _scroll(f"<table>{top}{sub}{count}{''.join(rows)}</table>")


def _signed(v: float, decimals: int, plus: str = "+") -> str:
    """``v`` rounded, never "-0.000"."""
    r = round(v, decimals) + 0.0
    return f"{r:{plus}.{decimals}f}"


def pairwise_tables(s: Summary) -> str:
    """Per model and metric (IoU, deletion, insertion): row method minus column method with its interval;
    green where the row is significantly better (the interval excludes 0), red where it is worse."""
    out = []
    for m in s.models:
        for key in PAIRWISE_METRICS:
            pairs = s.pairwise.get((key, m))
            if not pairs:
                continue
            col = s.column(key)
            methods = list(dict.fromkeys(a for a, _ in pairs))
            head = "<tr><th class='l'>row − column</th>" + "".join(f"<th>{esc(b)}</th>" for b in methods) + "</tr>"
            rows = []
            for a in methods:
                cells = []
                for b in methods:
                    c = pairs.get((a, b))
                    if c is None:
                        cells.append("<td>—</td>")
                        continue
                    excl = c.low > 0 or c.high < 0
                    good = (c.diff > 0) == (col.better == "higher")
                    cls = (' class="win"' if good else ' class="loss"') if excl else ""
                    d = col.decimals - 1
                    iv = f"[{_signed(c.low, d, '')}, {_signed(c.high, d, '')}]"
                    cells.append(f'<td{cls}>{_signed(c.diff, col.decimals)}<br><span class="ci">{esc(iv)}</span></td>')
                rows.append(f'<tr><td class="l">{esc(a)}</td>{"".join(cells)}</tr>')
            out.append(f"<h3>{esc(model_label(m))}: {esc(col.label)} {'↑' if col.better == 'higher' else '↓'}</h3>"
                       + _scroll(f"<table>{head}{''.join(rows)}</table>"))
    return "".join(out) or '<p class="small">Fewer than two methods.</p>'


def _accuracy_table(s: Summary) -> str:
    rows = "".join(
        f'<tr><td class="l">{esc(model_label(m))}</td><td>{s.images.get(m, 0)}</td><td>{s.correct.get(m, 0)}</td>'
        f"<td>{esc(fmt(s.accuracy(m), 2))}</td></tr>" for m in s.models)
    return _scroll("<table><tr><th class='l'>Model</th><th>Images</th><th>Correct</th><th>Top-1 accuracy %</th></tr>"
                   f"{rows}</table>")


def _timing_table(s: Summary) -> str:
    head = "".join(f"<th>{esc(model_label(m))}</th>" for m in s.models)
    rows = []
    for method in s.methods:
        cells = "".join(
            f"<td>{esc(fmt(s.timing[(m, method)] * 1000, 1)) if (m, method) in s.timing else '—'}</td>" for m in s.models)
        rows.append(f'<tr><td class="l">{esc(method)}</td>{cells}</tr>')
    return _scroll(f"<table><tr><th class='l'>Method (ms per image, map only)</th>{head}</tr>{''.join(rows)}</table>")


def _figures(figs: Sequence[FigureRef]) -> str:
    return "".join(
        f'<figure><h3>{esc(f.title)}</h3><img src="{esc(f.path)}" alt="{esc(f.title)}" style="max-width:100%">'
        f"<figcaption>{esc(f.caption)}</figcaption></figure>" for f in figs)


class _Gallery:
    """Lookup of gallery pictures by model, image and (method, kind)."""

    def __init__(self, records: Sequence[Record]) -> None:
        self.images: dict[str, list[Record]] = {}
        self.overlays: dict[tuple[str, str, str, str], str] = {}
        for r in records:
            files = r.get("files") or {}
            if r.get("type") == "image" and "image.jpg" in files:
                self.images.setdefault(r["model"], []).append(r)
            elif r.get("type") == "map" and "overlay.jpg" in files:
                self.overlays[(r["model"], r["image"], r["method"], r["kind"])] = files["overlay.jpg"]
        for v in self.images.values():
            v.sort(key=lambda r: r["index"])

    def overlay(self, model: str, image: str, method: str, kind: str) -> Optional[str]:
        return self.overlays.get((model, image, method, kind))


def _image_cell(r: Record) -> str:
    labels = ", ".join(r.get("label_names", []))
    return (f'<td class="l">{_img(r["files"]["image.jpg"], r["image"])}<div class="small">{esc(r["image"])}<br>'
            f"true: {esc(labels)}<br>predicted: {esc(r['pred_name'])} ({r['prob']:.2f})</div></td>")


def _methods_gallery(g: _Gallery, model: str, rows: list[Record], methods: Sequence[str], kind: str) -> str:
    if not rows:
        return '<p class="small">No such image among the gallery images.</p>'
    head = "<tr><th class='l'>Image</th>" + "".join(f"<th>{esc(m)}</th>" for m in methods) + "</tr>"
    body = "".join(
        "<tr>" + _image_cell(r) + "".join(
            f"<td>{_img(g.overlay(model, r['image'], m, kind), m + ' ' + r['image'])}</td>" for m in methods) + "</tr>"
        for r in rows)
    return _scroll(f"<table>{head}{body}</table>")


def _pair_gallery(g: _Gallery, model: str, rows: list[Record], method: str) -> str:
    if not rows:
        return '<p class="small">No misclassified image among the gallery images.</p>'
    head = ("<tr><th class='l'>Image</th><th>Predicted class</th><th>Map of the predicted class</th>"
            "<th>Actual class</th><th>Map of the actual class</th></tr>")
    body = "".join(
        f"<tr>{_image_cell(r)}<td>{esc(r['pred_name'])}</td><td>{_img(g.overlay(model, r['image'], method, 'top1'), 'predicted')}</td>"
        f"<td>{esc(r['true_name'])}</td><td>{_img(g.overlay(model, r['image'], method, 'true'), 'actual')}</td></tr>"
        for r in rows)
    return _scroll(f"<table>{head}{body}</table>")


def galleries(records: Sequence[Record], s: Summary) -> str:
    """Per model: correctly classified x methods, misclassified x methods, and for misclassified images
    the map of the predicted class beside the map of the true class (survey Tables 2-7)."""
    g = _Gallery(records)
    methods = [m for m in s.methods if not m.startswith("baseline:")]
    pair = "gradcam" if "gradcam" in methods else (methods[0] if methods else "")
    out = []
    for model in s.models:
        imgs = g.images.get(model, [])
        right = [r for r in imgs if r["correct"]][:GALLERY_ROWS]
        wrong = [r for r in imgs if not r["correct"]][:GALLERY_ROWS]
        name = esc(model_label(model))
        out.append(f"<h3>{name}: correctly classified images (Tables 2, 5)</h3>")
        out.append(_methods_gallery(g, model, right, methods, "top1"))
        out.append(f"<h3>{name}: misclassified images, map of the predicted class (Tables 3, 6)</h3>")
        out.append(_methods_gallery(g, model, wrong, methods, "top1"))
        out.append(f"<h3>{name}: misclassified images, predicted vs actual class, {esc(pair)} (Tables 4, 7)</h3>")
        out.append(_pair_gallery(g, model, wrong, pair))
    return "".join(out)


def _verdict(s: Summary) -> str:
    """The report's headline: which map to trust per model (the verdict), and the rule."""
    if not s.verdict:
        return ""
    lines, rule = s.verdict[:-1], s.verdict[-1]
    none = all("trust " not in line for line in lines)
    items = "".join(f"<li>{esc(line)}</li>" for line in lines)
    notes = "".join(f"<li>{esc(line)}</li>" for line in s.verdict_notes)
    details = f'<details class="small"><summary>Why the other methods do not qualify</summary><ul>{notes}</ul></details>'
    return (f'<div class="verdict{" none" if none else ""}"><h2>Which map to trust</h2><ul>{items}</ul>'
            f'<p class="small">{esc(rule)}</p>{details if notes else ""}</div>')


def _identical(s: Summary) -> str:
    lines = identical_lines(s)
    if not lines:
        return ""
    items = "".join(f"<li>{esc(line)}</li>" for line in lines[:-1])
    return f'<h2>Identical rows</h2><ul>{items}</ul><p class="small">{esc(lines[-1])}</p>'


def render(s: Summary, records: Sequence[Record], figures: Sequence[FigureRef], info: dict[str, Any]) -> str:
    """The whole page. ``info``: run facts shown at the top (strings or numbers)."""
    facts = "".join(f"<tr><td class='l'>{esc(k)}</td><td class='l'>{esc(v)}</td></tr>" for k, v in info.items())
    errors = "".join(f"<li>{esc(model_label(mo))} / {esc(me)}: <span class='err'>{esc(msg)}</span></li>"
                     for (mo, me), msg in sorted(s.errors.items()))
    skipped = ", ".join(esc(i) for i in s.skipped) or "none"
    problems = ", ".join(f"{esc(k)}: {v}" for k, v in sorted(s.problems.items())) or "none"
    protocol = "".join(f"<li>{esc(p)}</li>" for p in s.protocol)
    warnings = "".join(f"<p class='err'><b>Warning: {esc(random_weights_warning(m))}.</b></p>"
                       for m in s.models if random_weights(m))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>camkit benchmark</title><style>{STYLE}</style></head>
<body>
<h1>camkit benchmark</h1>
{_verdict(s)}
{_scroll(f"<table>{facts}</table>")}
{warnings}
<h2>Table 8: localisation and confidence (predicted class)</h2>
{metric_table(s, s.table8)}
<h2>Further metrics</h2>
{metric_table(s, s.more)}
<p class="small">{esc(LEGEND.replace(chr(92), ""))} Bold: best method per column (baselines excluded). n/a: the method
cannot run on the model (hover for why).</p>
{_identical(s)}
<h2>Which methods can be told apart</h2>
<ul>{"".join(f"<li><b>{esc(model_label(m))}</b>: {esc(s.findings(m))}</li>" for m in s.models)}</ul>
<p class="small">Each method against the best baseline map of every model and metric: significance.csv.</p>
<h2>Method against method</h2>
<p class="small">Paired differences (row minus column) over the images both have, with 95% bootstrap intervals
(uncorrected); green: the row method is better with an interval that excludes 0, red: worse.</p>
{pairwise_tables(s)}
<h2>Classification accuracy</h2>
{_accuracy_table(s)}
<h2>Time</h2>
{_timing_table(s)}
<h2>Figures</h2>
{_figures(figures)}
<h2>Galleries</h2>
{galleries(records, s)}
<h2>Data</h2>
<p>Unreadable images skipped ({len(s.skipped)}): {skipped}</p>
<p>Dataset problems: {problems}</p>
{f"<h2>Errors</h2><ul>{errors}</ul>" if errors else ""}
<h2>Protocol</h2>
<ul>{protocol}</ul>
</body></html>
"""
