"""`harness site`: a static, self-contained leaderboard site with per-method and per-latent failure pages.

Every page is one HTML file with its CSS, its few lines of JavaScript (table sorting) and its charts inline:
it opens from ``file://`` or any static host and fetches nothing. Charts are SVG drawn here rather than by
a JavaScript charting library: the site's charts are a handful of lines, error bars and histograms, and the
lightest library measured (uPlot, 50 KB minified, Chart.js 205 KB) would outweigh every chart on a page
several times over and still need a script to run before anything shows (see docs/site.md).

Every number comes from result files and their side files as written by `harness eval`; nothing is
re-scored. Every piece of user-supplied text (method names, descriptions, explanations, decoded contexts)
goes through :func:`el`, which escapes by default: only :class:`Raw` values built here pass unescaped.
"""

from __future__ import annotations

import html
import math
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import __version__
from harness.errors import HarnessError
from harness.io import one_line
from harness.report.failures import (
    Loaded,
    at_latent,
    case_titles,
    explanations_of,
    failure_counts,
    latent_report,
    load_decoder,
    load_with_side,
    test_windows,
)
from harness.report.format import interval, number
from harness.report.leaderboard import (
    COLUMNS_HELP,
    ENV_MARK,
    Rejected,
    Row,
    collect_results,
    env_help,
    rank_help,
)
from harness.report.plots import Series, hist_figure, line_figure, svg
from harness.result import SIDE, Interval

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


# ---------------------------------------------------------------- escaping HTML builder

class Raw(str):
    """Markup built by this module; everything else is text and is escaped."""


def esc(x: Any) -> str:
    return x if isinstance(x, Raw) else html.escape(str(x), quote=True)


def el(tag: str, *children: Any, **attrs: Any) -> Raw:
    # class_ → class, data_v → data-v; None/False attributes are left out
    parts = []
    for k, v in attrs.items():
        if v is None or v is False:
            continue
        name = k.rstrip("_").replace("_", "-")
        parts.append(name if v is True else f'{name}="{html.escape(str(v), quote=True)}"')
    open_ = f"<{tag}{' ' if parts else ''}{' '.join(parts)}>"
    if tag in ("img", "br", "meta", "hr", "input", "link"):
        return Raw(open_)
    return Raw(open_ + "".join(esc(c) for c in _flat(children)) + f"</{tag}>")


def _flat(xs: Iterable[Any]):
    for x in xs:
        if x is None:
            continue
        if isinstance(x, (list, tuple)):
            yield from _flat(x)
        else:
            yield x


def join(*xs: Any) -> Raw:
    return Raw("".join(esc(x) for x in _flat(xs)))


# ---------------------------------------------------------------- page shell

CSS = """
:root{--fg:#1b1f24;--mut:#59636e;--bg:#fff;--line:#d8dee4;--acc:#0b5fff;--hi:#fff3b0;--bad:#b3261e}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1280px;margin:0 auto;padding:12px 16px 48px}
nav.crumbs{font-size:13px;color:var(--mut);margin:4px 0 8px;overflow-wrap:anywhere}
a{color:var(--acc)}
h1{font-size:22px;margin:6px 0 8px;overflow-wrap:anywhere}
h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
p,li,dd,figcaption{overflow-wrap:anywhere}
p.help,.mut{color:var(--mut);font-size:13px}
.wrap{overflow-x:auto;-webkit-overflow-scrolling:touch;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:right;vertical-align:top;white-space:nowrap}
th{background:#f6f8fa;position:sticky;top:0}
td.t,th.t{text-align:left;white-space:normal;min-width:8em;max-width:34em;overflow-wrap:anywhere}
th.ranked{box-shadow:inset 0 -3px 0 #1f77b4}
figcaption.warn{color:#8a5a00}
td.sim{min-width:22em}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th::after{content:" \\2195";color:#aab}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";color:var(--fg)}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";color:var(--fg)}
td .ci{display:block;width:130px;height:16px;margin-left:auto}
td .v{display:block}
.ns{color:var(--bad);font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,420px),1fr));gap:16px}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:8px}
figcaption{font-size:13px;color:var(--mut);margin-top:4px}
svg.chart{width:100%;height:auto;display:block}
svg text{font:11px system-ui,sans-serif;fill:#333}
ul.legend{list-style:none;padding:0;margin:4px 0 0;display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px}
ul.legend li{overflow-wrap:anywhere}
ul.legend i{display:inline-block;width:18px;height:0;border-top:3px solid;vertical-align:middle;margin-right:4px}
.ctx{white-space:pre-wrap;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;text-align:left;
     min-width:16em;max-width:60em;overflow-wrap:anywhere}
mark.tok{background:var(--hi);outline:1px solid #c9a400;padding:0 1px}
.next{color:#8a94a0;border-bottom:1px dotted #8a94a0}
.expl{font-size:16px;background:#f6f8fa;border-left:4px solid var(--acc);padding:8px 12px;white-space:pre-wrap;
      overflow-wrap:anywhere}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:14px}
dl.kv dt{color:var(--mut)}dl.kv dd{margin:0;overflow-wrap:anywhere}
img.fig{max-width:100%;height:auto}
@media (max-width:600px){body{font-size:14px}main{padding:8px}h1{font-size:19px}td .ci{width:90px}}
"""

# Sorting only: numbers sort by the data-v attribute (the unrounded value), missing values always last.
JS = """
(function(){
function key(td){var v=td.getAttribute('data-v');if(v===null){return td.textContent.trim();}
 if(v===''){return null;}var n=Number(v);return isNaN(n)?v:n;}
function sortBy(t,i,th){var asc=th.getAttribute('aria-sort')!=='ascending';
 Array.prototype.forEach.call(th.parentNode.cells,function(c){c.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',asc?'ascending':'descending');var b=t.tBodies[0];
 var rows=Array.prototype.slice.call(b.rows);
 rows.sort(function(r,s){var x=key(r.cells[i]),y=key(s.cells[i]);
  if(x===null||y===null){return (x===null)-(y===null);}
  var c=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y),undefined,{numeric:true});
  return asc?c:-c;});
 rows.forEach(function(r){b.appendChild(r);});}
Array.prototype.forEach.call(document.querySelectorAll('table.sortable'),function(t){
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){th.tabIndex=0;
  th.addEventListener('click',function(){sortBy(t,i,th);});
  th.addEventListener('keydown',function(e){
   if(e.key==='Enter'||e.key===' '){e.preventDefault();sortBy(t,i,th);}});});});
})();
"""


def page(title: str, body: Any, crumbs: list[tuple[str, str | None]], *, sortable: bool = False) -> str:
    nav = el("nav", join(*[
        (el("a", name, href=href) if href else el("span", name), " / " if k < len(crumbs) - 1 else "")
        for k, (name, href) in enumerate(crumbs)]), class_="crumbs")
    foot = el("p", f"Built by harness {__version__} from result files; static, self-contained, no network.",
              class_="mut")
    doc = join(
        Raw("<!doctype html>\n"),
        el("html",
           el("head", Raw('<meta charset="utf-8">'),
              Raw('<meta name="viewport" content="width=device-width,initial-scale=1">'),
              # Nothing on these pages may load from elsewhere: the policy makes that a visible error.
              Raw("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' data:; "
                  "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"),
              el("title", title), Raw(f"<style>{CSS}</style>")),
           el("body", el("main", nav, body, foot),
              Raw(f"<script>{JS}</script>") if sortable else None),
           lang="en"),
    )
    return doc + "\n"


# ---------------------------------------------------------------- numbers

def _f(x: Any) -> float:
    try:
        return math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan


def _dv(x: Any) -> str:
    x = _f(x)
    return "" if math.isnan(x) else repr(x)


# ---------------------------------------------------------------- SVG charts

def _domain(vals: Iterable[float], pad: float = 0.05, include: tuple[float, ...] = ()) -> tuple[float, float]:
    v = [x for x in vals if math.isfinite(x)] + list(include)
    if not v:
        return 0.0, 1.0
    lo, hi = min(v), max(v)
    if hi == lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
    span = hi - lo
    return lo - pad * span, hi + pad * span


def line_chart(series: list[Series], *, xlabel: str, ylabel: str, hlines: Iterable[tuple[float, str, str]] = (),
               xdomain: tuple[float, float] | None = None, h: int = 300) -> Raw:
    """Lines with CI bars (harness.report.plots, the one chart engine), inlined; each series' name on hover."""
    fig = line_figure(series, xlabel=xlabel, ylabel=ylabel, hlines=hlines, xdomain=xdomain, size=(5.6, h / 100))
    return Raw(svg(fig, [s.name for s in series]))


def hist_chart(groups: list[tuple[str, str, np.ndarray]], *, xlabel: str) -> Raw:
    fig = hist_figure(groups, xlabel=xlabel)
    return Raw(svg(fig, [g[0] for g in groups])) if fig is not None else Raw('<p class="mut">no values to plot</p>')


def ci_strip(e: Interval, dom: tuple[float, float]) -> Raw:
    """A point and its 95% CI on the column's shared scale, with zero marked."""
    w, h, lo_d, hi_d = 130, 16, dom[0], dom[1]
    v, lo, hi = _f(e.value), _f(e.lo), _f(e.hi)
    if math.isnan(v):
        return Raw("")

    def X(x):
        return 3 + (min(max(x, lo_d), hi_d) - lo_d) / (hi_d - lo_d) * (w - 6)

    parts = []
    if lo_d <= 0 <= hi_d:
        parts.append(f'<line x1="{X(0):.1f}" x2="{X(0):.1f}" y1="1" y2="{h - 1}" stroke="#999" '
                     'stroke-dasharray="2 2"/>')
    if math.isfinite(lo) and math.isfinite(hi):
        parts.append(f'<line x1="{X(lo):.1f}" x2="{X(hi):.1f}" y1="8" y2="8" stroke="#1f77b4" stroke-width="2"/>'
                     f'<line x1="{X(lo):.1f}" x2="{X(lo):.1f}" y1="4" y2="12" stroke="#1f77b4"/>'
                     f'<line x1="{X(hi):.1f}" x2="{X(hi):.1f}" y1="4" y2="12" stroke="#1f77b4"/>')
    parts.append(f'<circle cx="{X(v):.1f}" cy="8" r="3.5" fill="#1f77b4"/>')
    return Raw(f'<svg class="ci" viewBox="0 0 {w} {h}" aria-hidden="true">' + "".join(parts) + "</svg>")


def legend(items: list[tuple[str, str, bool]]) -> Raw:
    return el("ul", [el("li", Raw(f'<i style="border-color:{c};border-top-style:{"dashed" if d else "solid"}"></i>'),
                        name) for name, c, d in items], class_="legend")


# ---------------------------------------------------------------- orderings

def ordering_marks(rows: list[Row]) -> list[tuple[str, str]]:
    """For each row, how its place above the next row is supported: (mark, explanation).

    The Markdown leaderboard's own rule (`leaderboard.mark_ties`, which filled each row's `rank` and
    `vs_above`): an ordering counts only when the paired-difference CI with the next row excludes 0.
    """
    out = []
    for nxt in rows[1:]:
        v = nxt.vs_above
        if nxt.rank.startswith("?") or v is None:
            out.append(("?", "no paired test was possible (side file missing): this ordering is not supported"))
        elif nxt.rank.startswith("="):
            out.append(("≈", f"paired difference CI [{v.lo:.3f}, {v.hi:.3f}] includes 0: not significant"))
        else:
            out.append((">", f"paired difference CI [{v.lo:.3f}, {v.hi:.3f}] excludes 0"))
    if rows:
        out.append(("", "last row"))
    return out


# ---------------------------------------------------------------- site

def _safe(s: str, n: int = 60) -> str:
    return ("".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in s)[:n]).strip("-") or "x"


@dataclass
class MethodEntry:
    row: Row
    loaded: Loaded
    slug: str
    colour: str


def build_site(out_dir: str | os.PathLike, results_dir: str | os.PathLike = "results", task: str | None = None,
               *, console=None, n_cases: int = 5, warn: Callable[[str], None] | None = None) -> Path:
    """Write the site under ``out_dir`` and return its index.html; ``warn`` gets one line per result file
    left out (damaged side file, other task hash...), which the task page also lists."""
    from harness.task.spec import list_tasks

    out = Path(out_dir)
    if task is not None:
        from harness.task.spec import load_task

        specs = [load_task(task)]
    else:
        specs = list_tasks()
    if not Path(results_dir).is_dir():
        raise HarnessError(f"{results_dir}: results folder not found — run `harness eval` first or pass --results")
    hashes = {s.id: s.hash for s in specs}
    fixed = {s.id for s in specs if s.simulator.cascade}
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    per_task: list[tuple[Any, list[MethodEntry], list, Any]] = []
    for spec in specs:
        rows, rejected = collect_results(results_dir, spec.id, task_hashes=hashes, fixed_cascade=fixed)
        entries = []
        for r in rows:
            loaded = load_with_side(r.path, require_side=False)
            if loaded.damaged:
                # Readable enough to rank (the two arrays the leaderboard reads) but not whole: left out.
                rejected.append(Rejected(r.path, loaded.side_note, damaged=True))
                continue
            entries.append(MethodEntry(r, loaded, _safe(Path(r.path).stem), PALETTE[len(entries) % len(PALETTE)]))
        for rj in rejected:
            if warn is not None:
                warn(f"rejected {one_line(rj.path)}: {one_line(rj.reason)}")
        per_task.append((spec, entries, rejected, _oracle_of(Path(results_dir) / spec.id)))
    n_pages = sum(len(e.loaded.latents) for _, es, _, _ in per_task for e in es)

    from harness.io import progress

    with progress() as prog:
        bar = prog.add_task("site: latent pages", total=n_pages)
        for spec, entries, rejected, oracle in per_task:
            tdir = out / _safe(spec.id)
            tdir.mkdir(parents=True, exist_ok=True)
            decode, dnote = load_decoder(spec) if entries else (None, "")
            for e in entries:
                _write_method(tdir, spec, e, decode, dnote, n_cases, lambda: prog.advance(bar, 1))
            _write(tdir / "index.html", _task_page(spec, entries, rejected, oracle, results_dir))
            best = entries[0].row.recovery.value if entries else math.nan
            summary.append((spec, len(entries), best, entries[0].row.method if entries else ""))
    index = _write(out / "index.html", _index_page(summary))
    return index


def _public_path(path: str) -> str:
    """A path recorded by an older harness may be absolute (/home/<name>/...): a page shows its file name."""
    return Path(path).name if Path(path).is_absolute() else path


def _public_text(text: str, root: str | os.PathLike) -> str:
    """`text` with the results folder's absolute location cut to the folder's name (pages are published;
    the evaluator's folders are not)."""
    r = Path(root)
    for base in {str(r.resolve()), str(r.absolute())}:
        text = text.replace(base.rstrip("/") + "/", "")
    return text


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _index_page(summary) -> str:
    rows = [el("tr", el("td", el("a", spec.id, href=f"{_safe(spec.id)}/index.html"), class_="t"),
               el("td", spec.description, class_="t"), el("td", str(n), data_v=n),
               el("td", f"{number(best, 3)} ({method})" if n else "—", data_v=_dv(best)))
            for spec, n, best, method in summary]
    hdr = el("tr", el("th", "task", class_="t"), el("th", "description", class_="t"), el("th", "methods"),
             el("th", "best recovery"))
    table = el("div", el("table", el("thead", hdr),
                         el("tbody", rows), class_="sortable", id="tasks"), class_="wrap")
    body = join(el("h1", "harness leaderboards"),
                el("p", "Faithfulness of natural-language explanations of sparse-coder latents, measured by partial "
                        "rewriting (Paulo & Belrose 2025). Pick a task.", class_="help"), table)
    return page("harness leaderboards", body, [("tasks", None)], sortable=True)


_INTERVALS = (
    ("recovery", "recovery", 2, "1 = as good as the true latents, 0 = no better than deleting them"),
    ("delta_ce_median_simulated", "ΔCE median (simulated)", 3, "nats vs the clean model, lower is better"),
    ("delta_ce_median_latent_zero", "ΔCE median (latent zero)", 3, "deleting the rewritten latents"),
    ("sim_minus_zero_mean", "simulated − latent zero (mean)", 3, "paired, negative is better"),
)


def _oracle_of(task_dir: Path):
    """The task's noisy-oracle report (harness/oracle.py), a note if it is unusable, or None if there is none."""
    from harness.result import ORACLE_FILE, load_oracle

    path = task_dir / ORACLE_FILE
    if not path.is_file():
        return None
    try:
        return load_oracle(path)
    except HarnessError as e:
        return str(e)


def _oracle_section(spec, oracle) -> Raw | None:
    """The noisy oracle as reference curves beside the leaderboard: what detection AUROC a method needs before
    partial rewriting tells it from deleting the latents. Never a row of the ranking."""
    if oracle is None:
        return None
    title = el("h2", "Reference: noisy oracle (not ranked)")
    if isinstance(oracle, str):
        return join(title, el("p", oracle, class_="mut"))
    if oracle.task.hash != spec.hash:
        return join(title, el("p", f"oracle.json was computed for task hash {oracle.task.hash[:12]}, not the current "
                                   f"{spec.hash[:12]}: rerun `harness oracle --task {spec.id}`", class_="mut"))
    colours = {"graded": "#1f77b4", "binary": "#ff7f0e"}
    figs = []
    for key, ylabel in (("recovery", "recovery"), ("sim_minus_zero_mean", "simulated − latent zero (nats)"),
                        ("sensitivity", "sensitivity"), ("specificity", "specificity")):
        series = []
        for form, colour in colours.items():
            rows = sorted((r for r in oracle.rows if r.form == form), key=lambda r: r.target_auroc)
            pts = [(r.target_auroc, _f(getattr(r, key).value), _f(getattr(r, key).lo), _f(getattr(r, key).hi)) for r in rows]
            series.append(Series(f"oracle · {form}", colour, pts, form == "binary"))
        hl = ([(1.0, "#2ca02c", "true latents (1)"), (0.0, "#d62728", "latents deleted (0)")] if key == "recovery"
              else [(0.0, "#d62728", "latents deleted (0)")] if key == "sim_minus_zero_mean" else [])
        figs.append(el("figure", line_chart(series, xlabel="oracle's target detection AUROC", ylabel=ylabel,
                                            hlines=hl, h=260),
                       el("figcaption", f"{ylabel} vs the oracle's detection AUROC (bars: 95% CI)")))
    hdr = el("tr", el("th", "form", class_="t"), el("th", "target AUROC"), el("th", "realised AUROC"),
             el("th", "recovery"), el("th", "simulated − latent zero"), el("th", "sens."), el("th", "spec."))

    body = [el("tr", el("td", r.form, class_="t"), el("td", f"{r.target_auroc:g}"), el("td", number(r.realised_auroc.value)),
               el("td", interval(r.recovery, 2)), el("td", interval(r.sim_minus_zero_mean, 3)),
               el("td", interval(r.sensitivity, 2)), el("td", interval(r.specificity, 2))) for r in oracle.rows]
    table = el("div", el("table", el("thead", hdr), el("tbody", body)), class_="wrap")
    help_ = el("p", "A simulator that reads each context's true activation, degraded by Gaussian noise to a target "
                    "detection AUROC (graded: knows the magnitude; binary: knows only whether the latent fires), "
                    "scored through this task's own calibration and patching. It knows the answers, so it is a "
                    "reference for the leaderboard above, not a method. Noise model: ", oracle.provenance.noise_model,
               f". {oracle.n_test} test contexts, seed {oracle.provenance.seed}; `harness oracle --task {spec.id}`.",
               class_="help")
    return join(title, help_, table, el("div", figs, class_="grid"),
                legend([(f"oracle · {f}", c, f == "binary") for f, c in colours.items()]))


def _task_page(spec, entries: list[MethodEntry], rejected, oracle=None,
               results_dir: str | os.PathLike = "results") -> str:
    crumbs = [("tasks", "../index.html"), (spec.id, None)]
    head = join(el("h1", f"Leaderboard: {spec.id}"), el("p", spec.description, class_="help"),
                el("p", f"Task hash {spec.hash}", class_="mut"))
    if not entries:
        return page(spec.id, join(head, el("p", "No results for this task yet: run `harness eval`."),
                                  _oracle_section(spec, oracle)), crumbs)
    doms = {}
    for key, *_ in _INTERVALS:
        vals = [v for e in entries for iv in (getattr(e.row, key),) for v in (iv.value, iv.lo, iv.hi)]
        doms[key] = _domain(vals, 0.05, include=(0.0,))
    marks = ordering_marks([e.row for e in entries])
    # The column the task ranks by comes right after the method, so it is in view without scrolling.
    by_auroc = any(e.row.rank_by == "detection_auroc" for e in entries)
    ranked = "detection_auroc" if by_auroc else "sim_minus_zero_mean"
    columns = [k for k, *_ in _INTERVALS] + ["sensitivity", "specificity", "detection_auroc"]
    columns.remove(ranked)
    columns.insert(0, ranked)
    labels = {k: (label, tip) for k, label, _, tip in _INTERVALS} | {
        "sensitivity": ("sens.", None), "specificity": ("spec.", None),
        "detection_auroc": ("det. AUROC", "mean per-latent detection AUROC, with its 95% CI over latents")}
    hdr = el("tr", el("th", "rank"), el("th", "method", class_="t"),
             [el("th", labels[k][0], title=labels[k][1], class_="ranked" if k == ranked else None) for k in columns],
             el("th", "coverage"),
             el("th", "vs next", title="is this row's place above the next supported by a paired test?"),
             el("th", "simulator", class_="t"), el("th", "date"))
    digits = {k: d for k, _, d, _ in _INTERVALS}
    body = []
    for pos, (e, (mark, why)) in enumerate(zip(entries, marks, strict=True), 1):
        r = e.row
        cells = [el("td", r.rank, data_v=pos),
                 el("td", el("a", r.method, href=f"{e.slug}/index.html"),
                    *((" ", el("span", ENV_MARK, title="differs in: " + ", ".join(r.env_differs)))
                      if r.env_differs else ()), class_="t", data_v=r.method)]
        for key in columns:
            if key in digits:
                est: Interval = getattr(r, key)
                cells.append(el("td", ci_strip(est, doms[key]), el("span", interval(est, digits[key]), class_="v"),
                                data_v=_dv(est.value)))
            elif key == "detection_auroc":
                cells.append(el("td", interval(r.detection_auroc_ci, 2) if r.detection_auroc_ci
                                else number(r.detection_auroc, 2), data_v=_dv(r.detection_auroc)))
            else:
                cells.append(el("td", number(getattr(r, key), 2), data_v=_dv(getattr(r, key))))
        cells.append(el("td", "n/a" if math.isnan(r.coverage) else f"{100 * r.coverage:.0f}%", data_v=_dv(r.coverage)))
        cells.append(el("td", mark, class_="ns" if mark in ("≈", "?") else None, title=why, data_v=mark))
        cells += [el("td", r.simulator, class_="t sim"), el("td", r.date[:10])]
        body.append(el("tr", cells, data_method=r.method))
    table = el("div", el("table", el("thead", hdr), el("tbody", body), class_="sortable", id="leaderboard"),
               class_="wrap")
    help_ = el("p", rank_help([e.row for e in entries]).replace("**", "").replace("`", ""), " ", COLUMNS_HELP,
               " Bars: point estimate and 95% CI on each column's shared scale (dashed: 0). "
               "Rank and “vs next” follow the leaderboard's rule (ties marked “=” in the rank): “>” the paired-"
               "difference CI with the next row excludes 0, “≈” it includes 0, “?” no paired test was possible. "
               "Click a header to sort.",
               *((" " + env_help([e.row for e in entries]).replace("`", ""),) if any(e.row.env_differs for e in entries) else ()),
               class_="help")
    rej = (el("details", el("summary", f"{len(rejected)} result file(s) not ranked"),
              el("ul", [el("li", _public_text(f"{rj.path}: {rj.reason}", results_dir)) for rj in rejected]))
           if rejected else None)
    sections = [head, table, help_, rej, _oracle_section(spec, oracle), _curves(entries), _calibration(entries),
                _sens_spec(entries)]
    return page(f"{spec.id} leaderboard", join(*sections), crumbs, sortable=True)


def _curves(entries: list[MethodEntry]) -> Raw:
    from harness.report.plots import curve_points

    figs = []
    for key, ylabel, title in (("recovery", "recovery", "Recovery vs fraction rewritten"),
                               ("delta_ce_median", "median ΔCE (nats)", "Median ΔCE vs fraction rewritten")):
        series, hl, n_unmeasured = [], [], 0
        for e in entries:
            conds = e.loaded.result.conditions
            for sel, dash in (("top-scoring", False), ("random", True)):
                x, v, lo, hi = curve_points(conds, "simulated", sel, key)
                pts = list(zip(x, v, lo, hi, strict=True))
                if key == "recovery":
                    # A recovery without a finite CI (its denominator not significantly above 0) measures
                    # nothing: drawn, it would read as a precise point. Left out, and counted in the caption.
                    kept = [p for p in pts if math.isfinite(p[2]) and math.isfinite(p[3])]
                    n_unmeasured += len(pts) - len(kept)
                    pts = kept
                if pts:
                    series.append(Series(f"{e.row.method} · {sel}", e.colour, pts, dash))
        if key == "recovery":
            hl = [(1.0, "#2ca02c", "true latents (1)"), (0.0, "#d62728", "latents deleted (0)")]
        else:
            x, v, lo, hi = curve_points(entries[0].loaded.result.conditions, "latent_zero", "random", key)
            if x.size:
                series.append(Series("latent zero · random", "#444", list(zip(x, v, lo, hi, strict=True)), True))
        chart = line_chart(series, xlabel="fraction of latents rewritten", ylabel=ylabel, hlines=hl,
                           xdomain=(0.0, 1.05))
        unmeasured = (f" {n_unmeasured} point(s) not drawn: recovery not measurable there (95% CI unbounded, "
                      "the recovery denominator is not significantly above 0)." if n_unmeasured else "")
        figs.append(el("figure", chart, el("figcaption", title, " (quantile calibration; solid: top-scoring "
                                           "latents first, dashed: random; bars: 95% CI).", unmeasured,
                                           class_="warn" if n_unmeasured else None)))
    items = [(e.row.method, e.colour, False) for e in entries] + [("latent zero", "#444", True)]
    return join(el("h2", "Partial-rewriting curves"), el("div", figs, class_="grid"), legend(items))


def _calibration(entries: list[MethodEntry]) -> Raw:
    figs = []
    for e in entries:
        side = e.loaded.side
        if side is None:
            figs.append(el("figure", el("p", e.loaded.side_note, class_="mut"), el("figcaption", e.row.method)))
            continue
        true = side[SIDE.true_test].ravel()
        if SIDE.sim_values("quantile") in side:
            sim = side[SIDE.sim_values("quantile")].ravel()
            groups = [("true (non-zero)", "#2ca02c", true[true > 0]),
                      ("simulated, quantile-calibrated (non-zero)", e.colour, sim[sim > 0])]
            note = (f"active: true {np.mean(true > 0):.1%}, simulated {np.mean(sim > 0):.1%} of "
                    f"(context, latent) pairs")
        else:
            # Older side files hold raw scores only, on the simulator's own scale: not comparable bin for bin.
            raw = side[SIDE.pred_test].ravel()
            groups = [("raw simulator score (uncalibrated scale)", e.colour, raw)]
            note = "this side file predates calibrated predictions: raw scores only"
        figs.append(el("figure", hist_chart(groups, xlabel="activation"), legend([(g[0], g[1], False) for g in groups]),
                       el("figcaption", el("b", e.row.method), " — ", note)))
    return join(el("h2", "Calibration: predicted vs true activation distribution"),
                el("p", "Fraction of non-zero values per bin, test contexts, all scored latents.", class_="help"),
                el("div", figs, class_="grid"))


def _sens_spec(entries: list[MethodEntry]) -> Raw:
    figs = []
    for key in ("sensitivity", "specificity"):
        series = []
        for e in entries:
            pts = [((_f(b.lo) + _f(b.hi)) / 2, _f(getattr(b, key)), math.nan, math.nan)
                   for b in e.loaded.result.sens_spec_by_detection_bin]
            series.append(Series(e.row.method, e.colour, pts))
        figs.append(el("figure", line_chart(series, xlabel="detection AUROC bin (midpoint)", ylabel=key,
                                            xdomain=(0.0, 1.0), h=260),
                       el("figcaption", f"{key.capitalize()} (macro average over the latents in each bin)")))
    items = [(e.row.method, e.colour, False) for e in entries]
    return join(el("h2", "Sensitivity and specificity by detection score"), el("div", figs, class_="grid"),
                legend(items))


def _write_method(tdir: Path, spec, e: MethodEntry, decode, dnote: str, n_cases: int, tick) -> None:
    mdir = tdir / e.slug
    mdir.mkdir(parents=True, exist_ok=True)
    res, loaded = e.loaded.result, e.loaded
    expl, enote = explanations_of(res, spec)
    windows, wnote = (test_windows(loaded, spec) if loaded.side is not None else (None, loaded.side_note))
    text_note = wnote or dnote
    figs = []
    for name in res.figures:
        src = loaded.path.parent / name
        if src.is_file() and name.lower().endswith(".png"):
            dst = mdir / _safe(Path(name).stem, 120)
            shutil.copyfile(src, dst.with_suffix(".png"))
            figs.append(el("figure", el("img", src=dst.with_suffix(".png").name, alt=name, class_="fig",
                                        loading="lazy"), el("figcaption", name)))
    counts = failure_counts(loaded) or {}
    pl = res.per_latent
    rows = []
    for i, j in enumerate(loaded.latents):
        fp, fn = counts.get(j, (None, None))
        text = (expl or {}).get(j)
        href = f"latent-{j}.html" if loaded.side is not None else None
        rows.append(el("tr", el("td", el("a", str(j), href=href) if href else str(j), data_v=j),
                       el("td", text if text is not None else "n/a", class_="t"),
                       [el("td", number(at_latent(getattr(pl, k), i), 2), data_v=_dv(at_latent(getattr(pl, k), i)))
                        for k in ("auroc", "balanced_accuracy", "sensitivity", "specificity", "score")],
                       el("td", "n/a" if fp is None else str(fp), data_v="" if fp is None else fp),
                       el("td", "n/a" if fn is None else str(fn), data_v="" if fn is None else fn)))
    r = e.row
    kv = el("dl", [join(el("dt", k), el("dd", v)) for k, v in (
        ("method", r.method), ("description", res.submission.description),
        ("submission", f"{_public_path(res.submission.path)} (sha256 {r.submission_sha256[:12]})"),
        ("simulator", f"{res.simulator.model_key} ({res.simulator.prompt_version}, {res.simulator.backend})"),
        ("recovery", interval(r.recovery, 3)), ("ΔCE median (simulated)", interval(r.delta_ce_median_simulated, 4)),
        ("sensitivity / specificity", f"{number(r.sensitivity, 3)} / {number(r.specificity, 3)}"),
        ("detection AUROC", number(r.detection_auroc, 3)), ("date", r.date), ("result file", loaded.path.name))],
        class_="kv")
    hdr = el("tr", el("th", "latent"), el("th", "explanation", class_="t"), el("th", "det. AUROC"),
             el("th", "bal. acc."), el("th", "sens."), el("th", "spec."), el("th", "selection score"),
             el("th", "# FP", title="test contexts: simulator fired, latent not"),
             el("th", "# FN", title="test contexts: latent fired, simulator not"))
    table = el("div", el("table", el("thead", hdr), el("tbody", rows), class_="sortable", id="latents"), class_="wrap")
    notes = [el("p", f"Explanations unavailable: {enote}", class_="mut") if enote else None,
             el("p", _public_text(loaded.side_note, loaded.path.parent), class_="mut") if loaded.side_note else None]
    body = join(el("h1", r.method), kv, notes, el("h2", "Latents"),
                el("p", "Click a latent for its failure report. Click a header to sort.", class_="help"), table,
                el("h2", "Figures written by harness eval") if figs else None, el("div", figs, class_="grid"))
    crumbs = [("tasks", "../../index.html"), (spec.id, "../index.html"), (r.method, None)]
    _write(mdir / "index.html", page(f"{r.method} · {spec.id}", body, crumbs, sortable=True))
    if loaded.side is None:
        for _ in loaded.latents:
            tick()
        return
    for j in loaded.latents:
        rep = latent_report(loaded, j, explanations=expl, explanation_note=enote, windows=windows, decode=decode,
                            text_note=text_note, n=n_cases)
        crumbs_l = [*crumbs[:2], (r.method, "index.html"), (f"latent {j}", None)]
        _write(mdir / f"latent-{j}.html", page(f"latent {j} · {r.method} · {spec.id}", _latent_body(rep, r.method),
                                               crumbs_l, sortable=True))
        tick()


def _latent_body(rep, method: str) -> Raw:
    expl = (el("div", rep.explanation, class_="expl", id="explanation") if rep.explanation is not None
            else el("p", f"Explanation unavailable: {rep.explanation_note}", class_="mut"))
    kv = el("dl", [join(el("dt", k), el("dd", v)) for k, v in (
        ("detection AUROC", number(rep.auroc, 3)), ("sensitivity", number(rep.sensitivity, 3)),
        ("specificity", number(rep.specificity, 3)), ("balanced accuracy", number(rep.balanced_accuracy, 3)),
        ("active on test contexts", f"true {rep.n_true_active}/{rep.n_test}, simulated "
                                    f"{'n/a' if rep.n_sim_active is None else rep.n_sim_active}/{rep.n_test}"),
        ("“simulator fired” means", rep.fired_rule))], class_="kv")
    sections = [el("h1", f"Latent {rep.latent} · {method}"), expl, kv]
    if rep.text_note:
        sections.append(el("p", f"Context text unavailable: {rep.text_note}", class_="mut"))
    fp_t, fn_t = case_titles(rep)
    for title, tid, cases, help_ in (("False positives", "fp", rep.false_positives, fp_t),
                                     ("False negatives", "fn", rep.false_negatives, fn_t)):
        rows = [el("tr", el("td", str(c.row), data_v=c.row), el("td", _context(c), class_="ctx"),
                   el("td", number(c.true, 3), data_v=_dv(c.true)), el("td", number(c.sim, 3), data_v=_dv(c.sim)),
                   el("td", number(c.pred, 3), data_v=_dv(c.pred))) for c in cases]
        if not rows:
            rows = [el("tr", el("td", "none", colspan=5, class_="t"))]
        hdr = el("tr", el("th", "test ctx"), el("th", "context · scored token marked", class_="t"),
                 el("th", "true act."), el("th", "simulated (calibrated)"), el("th", "raw score"))
        sections += [el("h2", f"{title} ({len(cases)} shown)"), el("p", help_, class_="help"),
                     el("div", el("table", el("thead", hdr), el("tbody", rows), class_="sortable", id=tid),
                        class_="wrap")]
    return join(*sections)


def _context(c) -> Raw:
    if c.prefix is None:
        return Raw('<span class="mut">(text unavailable)</span>')
    return join(c.prefix, el("mark", c.token, class_="tok", title="scored token"),
                el("span", c.target, class_="next", title="next token (its CE is measured)"))
