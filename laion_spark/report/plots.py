"""Plots of a report, drawn from report.json's aggregates only (no Spark, no rows).

    plots = draw_all(report)        # {name: Plot(png, width, height, title)}

matplotlib's object API with the Agg canvas (no pyplot, no global state, no display),
fixed sizes in pixels so the page can state them. A figure whose data is absent says so
in the image instead of being left out, so every section looks the same on every dataset.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
WIDTH, HEIGHT = 800, 360  # pixels of every plot except the probes (one row per term)
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


@dataclass
class Plot:
    name: str
    title: str
    png: bytes
    width: int
    height: int


def _figure(width: int = WIDTH, height: int = HEIGHT, cols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = [fig.add_subplot(1, cols, i + 1) for i in range(cols)]
    return fig, axes


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)  # exactly figsize * dpi pixels
    return buf.getvalue()


def _empty(ax, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#555")
    ax.set_xticks([])
    ax.set_yticks([])


def _bars(ax, labels: list[str], values: list[float], title: str, pct: bool = False) -> None:
    if not labels:
        _empty(ax, f"{title}: no data")
        ax.set_title(title)
        return
    y = np.arange(len(labels))
    ax.barh(y, values, color=COLORS[0])
    ax.set_yticks(y)
    ax.set_yticklabels([lbl if len(lbl) <= 28 else lbl[:27] + "…" for lbl in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title)
    if pct:
        ax.xaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")


def funnel(report: dict) -> tuple[str, Figure]:
    steps = report["funnel"]["steps"]
    fig, (ax,) = _figure()
    _bars(ax, [s["step"] for s in steps], [s["count"] for s in steps], "samples at each step")
    for i, s in enumerate(steps):
        ax.text(s["count"], i, f" {s['count']:,}", va="center", fontsize=8)
    return "Funnel: pages to subsets", fig


def rejections(report: dict) -> tuple[str, Figure]:
    f = report["funnel"]
    fig, (a, b) = _figure(cols=2)
    rej = f["extract"]["rejected"]
    _bars(a, list(rej), list(rej.values()), "extract: rejected links by reason")
    st = f["download_status"]
    _bars(b, list(st), list(st.values()), "download: images by status")
    return "Rejection reasons and download statuses", fig


def _rankings(*panels: tuple[list[dict], str]) -> Figure:
    """One panel per (ranking rows of report.json, title): each row's share of `key`."""
    fig, axes = _figure(cols=len(panels))
    for ax, (rows, title) in zip(axes, panels, strict=True):
        _bars(ax, [x["key"] for x in rows], [x["share"] or 0 for x in rows], title, True)
    return fig


def languages(report: dict) -> tuple[str, Figure]:
    r = report["rankings"]
    fig = _rankings((r["language_group"], "language group"), (r["language"], "top languages"))
    return "Languages", fig


def domains(report: dict) -> tuple[str, Figure]:
    return "Top domains", _rankings((report["rankings"]["domain"], "top image domains (share)"))


def licenses(report: dict) -> tuple[str, Figure]:
    return "Licenses", _rankings((report["rankings"]["license"], "licenses (share)"))


def _hist(ax, h: dict | None, title: str, color: str = COLORS[0], label: str | None = None,
          marks: list[tuple[float, str]] | None = None) -> None:
    if not h or not h["n"]:
        _empty(ax, f"{title}: no data")
        ax.set_title(title, fontsize=10)
        return
    edges = np.linspace(h["lo"], h["hi"], h["bins"] + 1)
    counts = np.asarray(h["counts"], dtype=float)
    ax.stairs(counts, edges, color=color, label=label, fill=label is None, alpha=0.8)
    for x, c in marks or []:
        ax.axvline(x, color=c, linestyle="--", linewidth=1)
    ax.set_title(title, fontsize=10)


def _data_range(h: dict, pad_bins: int = 2) -> tuple[float, float]:
    """The x range of a histogram's non-empty bins (similarity bins span [-1, 1])."""
    edges = np.linspace(h["lo"], h["hi"], h["bins"] + 1)
    nz = np.flatnonzero(np.asarray(h["counts"]))
    if not len(nz):
        return h["lo"], h["hi"]
    return edges[max(nz[0] - pad_bins, 0)], edges[min(nz[-1] + 1 + pad_bins, len(edges) - 1)]


def image_sizes(report: dict) -> tuple[str, Figure]:
    h = report["histograms"]
    fig, (a, b) = _figure(cols=2)
    if h.get("width", {}).get("n") or h.get("height", {}).get("n"):
        _hist(a, h.get("width"), "original width / height (px)", COLORS[0], "width")
        _hist(a, h.get("height"), "original width / height (px)", COLORS[1], "height")
        a.legend(fontsize=8)
    else:
        _hist(a, None, "original width / height (px)")
    _hist(b, h.get("aspect"), "aspect ratio, log2(width / height)")
    return "Image sizes and aspect ratios", fig


def similarity(report: dict) -> tuple[str, Figure]:
    h = report["histograms"]
    thr = report["thresholds"]["clip"]["values"]
    fig, (ax,) = _figure()
    groups = sorted(k.split(":", 1)[1] for k in h if k.startswith("similarity:"))
    if not groups:
        _empty(ax, "no CLIP similarities (nothing embedded)")
    lo, hi = np.inf, -np.inf
    for i, g in enumerate(groups):
        c = COLORS[i % len(COLORS)]
        t = thr.get(g, thr.get("*", thr.get("multi")))
        marks = [(t, c)] if t is not None else []
        _hist(ax, h[f"similarity:{g}"], "", c, f"{g} (threshold {t})", marks)
        g_lo, g_hi = _data_range(h[f"similarity:{g}"])
        lo, hi = min(lo, g_lo, *(m[0] - 0.02 for m in marks)), max(hi, g_hi, *(m[0] + 0.02 for m in marks))
    if groups:
        ax.set_xlim(lo, hi)
        ax.legend(fontsize=8)
    ax.set_title("CLIP image-text similarity by language group (dashed: threshold)")
    return "CLIP similarity", fig


def scores(report: dict) -> tuple[str, Figure]:
    h = report["histograms"]
    s = report["thresholds"]["score"]
    fig, axes = _figure(cols=4)
    for ax, (col, thr) in zip(
        axes,
        [
            ("punsafe", s["punsafe_threshold"]),
            ("pwatermark", s["pwatermark_threshold"]),
            ("aesthetic", None),
            ("toxicity", s["toxicity_threshold"]),
        ],
        strict=True,
    ):
        _hist(ax, h.get(col), col, marks=[(thr, COLORS[3])] if thr is not None else None)
    return "Safety and quality score distributions", fig


def tags(report: dict) -> tuple[str, Figure]:
    r = report["rankings"]
    fig = _rankings(
        (r["nsfw_tag"], "zero-shot tag (scored)"), (r["flag"], "flags (share of scored)")
    )
    return "Zero-shot NSFW tags and flags", fig


def sensitivity(report: dict) -> tuple[str, Figure]:
    return "Threshold sensitivity", _sweep_figure([("", report["sensitivity"])])


def _sweep_figure(sides: list[tuple[str, dict]]) -> Figure:
    fig, (a, b) = _figure(cols=2)
    for j, (label, sweep) in enumerate(sides):
        pts = sweep["points"]
        if not pts:
            continue
        x = [p["threshold"] for p in pts]
        style = "-" if j == 0 else "--"
        a.plot(x, [p["kept"] for p in pts], style, color=COLORS[0], label=f"kept {label}".strip())
        for key, c, name in (
            ("nsfw_share", COLORS[3], "NSFW"),
            ("unsure_share", COLORS[1], "UNSURE"),
            ("toxic_share", COLORS[4], "toxic"),
        ):
            y = [np.nan if p[key] is None else p[key] for p in pts]
            b.plot(x, y, style, color=c, label=f"{name} {label}".strip())
    if not any(s["points"] for _, s in sides):
        _empty(a, "no thresholds")
        _empty(b, "no thresholds")
    a.set_title("kept samples vs CLIP threshold", fontsize=10)
    b.set_title("shares among the kept", fontsize=10)
    b.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    for ax in (a, b):
        ax.set_xlabel("similarity threshold")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def probes(report: dict) -> tuple[str, Figure]:
    p = report["probes"]
    terms = list(p.get("terms") or [])
    height = max(HEIGHT, 24 * len(terms) + 80)
    fig, (ax,) = _figure(height=height)
    if p.get("status") != "ok" or not terms:
        _empty(ax, "keyword probes were not run")
        return "Keyword probes", fig
    y = np.arange(len(terms))
    cap = [p["caption"][t]["nsfw_or_unsure_share"] for t in terms]
    idx_terms = p["index"].get("terms") or {}
    idx = [(idx_terms.get(t) or {}).get("nsfw_or_unsure_share") for t in terms]
    ax.barh(y - 0.2, [v or 0 for v in cap], 0.4, color=COLORS[0], label="caption match")
    if idx_terms:
        ax.barh(y + 0.2, [v or 0 for v in idx], 0.4, color=COLORS[1], label="index top-k")
    base = p["baseline"]["nsfw_or_unsure_share"]
    if base is not None:
        ax.axvline(base, color=COLORS[3], linestyle="--", label="population")
    ax.set_yticks(y)
    ax.set_yticklabels(terms, fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    ax.set_title("share tagged NSFW or UNSURE, per query term")
    ax.legend(fontsize=8)
    return "Keyword probes", fig


def compare(report: dict) -> tuple[str, Figure] | None:
    c = report.get("compare")
    if not c:
        return None
    fig = _sweep_figure([(f"A: {c['a']['label']}", c["a"]["sensitivity"]),
                         (f"B: {c['b']['label']}", c["b"]["sensitivity"])])
    return "Comparison (A solid, B dashed)", fig


DRAWERS: dict[str, Callable[[dict], Any]] = {
    "funnel": funnel,
    "rejections": rejections,
    "languages": languages,
    "domains": domains,
    "licenses": licenses,
    "image_sizes": image_sizes,
    "similarity": similarity,
    "scores": scores,
    "tags": tags,
    "sensitivity": sensitivity,
    "probes": probes,
    "compare": compare,
}


def draw_all(report: dict) -> dict[str, Plot]:
    out = {}
    for name, draw in DRAWERS.items():
        got = draw(report)
        if got is None:
            continue
        title, fig = got
        w, h = (int(round(v * DPI)) for v in fig.get_size_inches())
        out[name] = Plot(name, title, _png(fig), w, h)
    return out
