"""Every chart the harness draws, with one engine (matplotlib): the PNG figures of a result (after Paulo &
Belrose 2025, figures 1, 3 and 4) and of the oracle, and the site's inline SVG charts.

Figures are drawn on ``matplotlib.figure.Figure``, never through pyplot: no global figure state, no GUI
backend, safe to call from any thread or a headless server. The site's charts (`line_figure`, `hist_figure`)
leave their legend to the page, which lists each method once for a whole grid of charts; `svg` writes them
as text the page inlines (fonts from the page, no external file, byte-identical on every run).
"""

from __future__ import annotations

import html
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.result import ConditionRow, DetectionBin, Interval, Result

_SERIES = (
    # (condition name, selection, label, colour, marker, line style)
    ("simulated", "top-scoring", "simulated, top-scoring", "tab:blue", "o", "-"),
    ("simulated", "random", "simulated, random", "tab:blue", "s", "--"),
    ("latent_zero", "top-scoring", "latent zero, top-scoring", "tab:red", "o", "-"),
    ("latent_zero", "random", "latent zero, random", "tab:red", "s", "--"),
)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    from harness.io import atomic_write

    FigureCanvasAgg(fig)
    return atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))


def _legend(ax, fontsize: int) -> None:
    # an empty legend only draws a stray box (and warns)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def _f(x: Any) -> float:
    """A plotted number; absent or non-finite (an unbounded interval's ±inf) reads as NaN: nothing is drawn."""
    try:
        v = math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _yerr(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    # errorbar wants non-negative distances; a missing CI draws no bar rather than failing
    below = np.nan_to_num(values - lo, nan=0.0).clip(min=0)
    above = np.nan_to_num(hi - values, nan=0.0).clip(min=0)
    return np.vstack([below, above])


def curve_points(conditions: Sequence[ConditionRow], name: str, selection: str, key: str):
    """(fraction, value, lo, hi) of one partial-rewriting curve, quantile calibration, sorted by fraction."""
    pts = []
    for c in conditions:
        if c.name != name or c.selection != selection:
            continue
        # latent_zero does not depend on calibration (recorded as null or as the run's calibration)
        if name == "simulated" and c.calibration != "quantile":
            continue
        e: Interval | None = getattr(c, key)
        if e is None:
            continue
        pts.append((c.fraction, _f(e.value), _f(e.lo), _f(e.hi)))
    # one point per fraction: a duplicate (e.g. latent_zero stored per calibration) would zigzag
    uniq = {}
    for p in pts:
        uniq.setdefault(p[0], p)
    arr = np.array(sorted(uniq.values()), dtype=float).reshape(-1, 4)
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]


def _reference_delta(result: Result, which: str) -> tuple[float, str]:
    """ΔCE of the coder / zero-output baseline: its median when the result has one, else the mean."""
    e = getattr(result.headline, f"{which}_delta_ce_median")
    if e is not None and not math.isnan(_f(e.value)):
        return _f(e.value), "median"
    return _f(getattr(result.ce_means, which)) - _f(result.ce_means.clean), "mean"


def plot_partial_rewriting(result: Result, path: str | os.PathLike) -> Path:
    """Median ΔCE and recovery vs fraction of latents rewritten (paper's figure 3), quantile calibration."""
    conditions = result.conditions
    fig = Figure(figsize=(11, 4.2))
    ax_ce, ax_r = fig.subplots(1, 2)

    for name, sel, label, colour, marker, ls in _SERIES:
        x, v, lo, hi = curve_points(conditions, name, sel, "delta_ce_median")
        if x.size:
            ax_ce.errorbar(x, v, yerr=_yerr(v, lo, hi), label=label, color=colour, marker=marker,
                           linestyle=ls, capsize=3, markersize=4)  # fmt: skip
    for which, label, colour in (("zero_output", "zero output", "black"), ("coder", "coder", "tab:green")):
        y, stat = _reference_delta(result, which)
        if not math.isnan(y):
            ax_ce.axhline(y, color=colour, linestyle=":", label=f"{label} ({stat} ΔCE)")
    ax_ce.set_xlabel("fraction of latents rewritten")
    ax_ce.set_ylabel("median ΔCE vs clean model (nats)")
    ax_ce.set_title("CE increase")
    ax_ce.grid(alpha=0.3)
    _legend(ax_ce, 7)

    for name, sel, label, colour, marker, ls in _SERIES[:2]:
        x, v, lo, hi = curve_points(conditions, name, sel, "recovery")
        if x.size:
            ax_r.errorbar(x, v, yerr=_yerr(v, lo, hi), label=label, color=colour, marker=marker,
                          linestyle=ls, capsize=3, markersize=4)  # fmt: skip
    ax_r.axhline(1.0, color="tab:green", linestyle=":", label="true latents (1)")
    ax_r.axhline(0.0, color="tab:red", linestyle=":", label="latents deleted (0)")
    ax_r.set_xlabel("fraction of latents rewritten")
    ax_r.set_ylabel("recovery")
    ax_r.set_title("Recovery")
    ax_r.grid(alpha=0.3)
    _legend(ax_r, 7)

    task, method = result.task.id, result.submission.method
    # parse_math=False: a method named "x $^$ y" is text, not mathtext that fails to parse after the whole eval.
    fig.suptitle(f"Partial rewriting — {method} on {task} (quantile calibration)".strip(), parse_math=False)
    return _save(fig, path)


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=float).ravel()
    return a[np.isfinite(a)]


def plot_activation_distributions(
    true_nonzero: np.ndarray, pred_raw: np.ndarray, pred_calibrated: np.ndarray, path: str | os.PathLike
) -> Path:
    """Predicted activations before / after quantile normalisation vs the true ones (paper's figure 1)."""
    true_nonzero, pred_raw, pred_calibrated = map(_finite, (true_nonzero, pred_raw, pred_calibrated))
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    panels = ((pred_raw, "simulator prediction (raw 0–9 expected value)"),
              (pred_calibrated, "after quantile normalisation"))  # fmt: skip
    for ax, (pred, title) in zip(axes, panels, strict=True):
        both = np.concatenate([true_nonzero, pred])
        # shared bins so the two histograms are comparable bar for bar
        bins = np.linspace(both.min(), both.max(), 50) if both.size and both.min() < both.max() else 10
        if true_nonzero.size:
            ax.hist(true_nonzero, bins=bins, log=True, alpha=0.5, color="tab:green", label="true (non-zero)")
        if pred.size:
            ax.hist(pred, bins=bins, log=True, alpha=0.5, color="tab:blue", label="predicted")
        ax.set_title(title)
        ax.set_xlabel("activation")
        ax.set_ylabel("count (log)")
        _legend(ax, 8)
    return _save(fig, path)


def plot_sens_spec_by_bin(bins: Sequence[DetectionBin], path: str | os.PathLike) -> Path:
    """Sensitivity and specificity per detection-score bin (paper's figure 4)."""
    bins = list(bins)
    fig = Figure(figsize=(max(5.0, 0.9 * len(bins) + 2), 4))
    ax = fig.subplots()
    x = np.arange(len(bins))
    sens = np.array([_f(b.sensitivity) for b in bins])
    spec = np.array([_f(b.specificity) for b in bins])
    w = 0.38
    # NaN (an empty bin) stays NaN: no bar, rather than a bar at 0 that reads as a measurement
    ax.bar(x - w / 2, sens, w, label="sensitivity", color="tab:blue")
    ax.bar(x + w / 2, spec, w, label="specificity", color="tab:orange")
    ax.set_xticks(x, [f"{_f(b.lo):.2f}–{_f(b.hi):.2f}\nn={b.n}" for b in bins], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("detection score (AUROC) bin")
    ax.set_ylabel("macro average over latents")
    ax.set_title("Sensitivity and specificity by detection score")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, 8)
    return _save(fig, path)


def plot_oracle(report, path: str | os.PathLike) -> Path:
    """Recovery, sensitivity and specificity of the noisy oracle vs its target detection AUROC, both forms, with
    95% CI bands (harness/oracle.py)."""
    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3, gridspec_kw={"wspace": 0.35})
    styles = {"graded": ("tab:blue", "o"), "binary": ("tab:orange", "s")}
    for ax, key, label in zip(axes, ("recovery", "sensitivity", "specificity"),
                              ("recovery", "sensitivity (macro)", "specificity (macro)"), strict=True):
        for form, (colour, marker) in styles.items():
            rows = sorted((r for r in report.rows if r.form == form), key=lambda r: r.target_auroc)
            if not rows:
                continue
            x = np.array([r.target_auroc for r in rows])
            v, lo, hi = (np.array([_f(getattr(getattr(r, key), k)) for r in rows]) for k in ("value", "lo", "hi"))
            ax.plot(x, v, color=colour, marker=marker, label=form)
            ax.fill_between(x, lo, hi, color=colour, alpha=0.2, linewidth=0)
        if key == "recovery":
            ax.axhline(1.0, color="tab:green", linestyle=":", label="true latents (1)")
            ax.axhline(0.0, color="tab:red", linestyle=":", label="latents deleted (0)")
            # A recovery CI can run to ±inf where the denominator is not significant: keep the points readable.
            lo_y, hi_y = ax.get_ylim()
            ax.set_ylim(max(lo_y, -2.0), min(hi_y, 2.0))
        ax.set_xlabel("oracle's target detection AUROC")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        _legend(ax, 7)
    fig.suptitle(f"Noisy oracle on {report.task.id} (quantile calibration; bands: 95% CI)", parse_math=False)
    return _save(fig, path)


# ---------------------------------------------------------------- the site's charts (inline SVG)

@dataclass
class Series:
    name: str
    colour: str
    points: list[tuple[float, float, float, float]]   # x, y, lo, hi (lo/hi NaN: no error bar)
    dash: bool = False


def line_figure(series: Sequence[Series], *, xlabel: str, ylabel: str,
                hlines: Iterable[tuple[float, str, str]] = (), xdomain: tuple[float, float] | None = None,
                size: tuple[float, float] = (5.6, 3.0)) -> Figure:
    """Lines with 95% CI bars, one per series, and dotted reference lines (value, colour, label)."""
    fig = Figure(figsize=size)
    ax = fig.subplots()
    n = max(1, len(series))
    span = (xdomain[1] - xdomain[0]) if xdomain else 1.0
    for k, s in enumerate(series):
        pts = np.array([p for p in s.points if math.isfinite(p[1])], dtype=float).reshape(-1, 4)
        # Methods share x positions: a small per-series offset keeps their error bars apart.
        x = pts[:, 0] + (k - (n - 1) / 2) * 0.004 * span
        v, lo, hi = pts[:, 1], pts[:, 2], pts[:, 3]
        bars = np.isfinite(lo) & np.isfinite(hi)
        if bars.any():
            ax.errorbar(x[bars], v[bars], yerr=_yerr(v[bars], lo[bars], hi[bars]), fmt="none", ecolor=s.colour,
                        alpha=0.55, linewidth=1, gid=f"series{k}-ci")
        ax.plot(x, v, color=s.colour, linestyle="--" if s.dash else "-", linewidth=1.6, marker="o", markersize=3.5,
                gid=f"series{k}")
    for y, colour, _label in hlines:
        ax.axhline(y, color=colour, linestyle=":", linewidth=1)
    if xdomain:
        ax.set_xlim(*xdomain)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout(pad=0.3)
    return fig


def hist_figure(groups: Sequence[tuple[str, str, np.ndarray]], *, xlabel: str, bins: int = 30,
                size: tuple[float, float] = (4.2, 2.2)) -> Figure | None:
    """Overlaid step histograms (fraction of each group's values per bin) on shared bins; None without values."""
    values = [_finite(v) for _, _, v in groups]
    every = np.concatenate(values) if values else np.zeros(0)
    if not every.size:
        return None
    lo, hi = float(every.min()), float(every.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig = Figure(figsize=size)
    ax = fig.subplots()
    for k, ((_name, colour, _), v) in enumerate(zip(groups, values, strict=True)):
        if v.size:
            ax.hist(v, bins=list(edges), weights=np.full(v.size, 1.0 / v.size), histtype="stepfilled", color=colour,
                    alpha=0.18, edgecolor=colour, linewidth=1.5, gid=f"series{k}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction")
    fig.tight_layout(pad=0.3)
    return fig


_SVG_PREAMBLE = re.compile(r"\A.*?(?=<svg)", re.S)
_SVG_STYLE = re.compile(r"<defs>\s*<style[^>]*>.*?</style>\s*</defs>|<metadata>.*?</metadata>", re.S)
_SVG_SIZE = re.compile(r'(<svg[^>]*?) width="[^"]*" height="[^"]*"')


def svg(fig: Figure, titles: Sequence[str] = ()) -> str:
    """The figure as an inline <svg class="chart">: text as text in the page's font, no XML preamble, no global
    stylesheet (matplotlib's `*{...}` rule would restyle the whole page), and `titles[k]` as the hover tooltip
    of series k. Identical input gives identical bytes (fixed hash salt, no date)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "harness", "font.size": 9}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = _SVG_SIZE.sub(r'\1 class="chart" role="img"', _SVG_STYLE.sub("", _SVG_PREAMBLE.sub("", buf.getvalue()), 2), 1)
    for k, title in enumerate(titles):
        tip = f"<title>{html.escape(title)}</title>"
        text = text.replace(f'<g id="series{k}">', f'<g id="series{k}">{tip}', 1)
        text = text.replace(f'<g id="series{k}-ci">', f'<g id="series{k}-ci">{tip}', 1)
    return text
