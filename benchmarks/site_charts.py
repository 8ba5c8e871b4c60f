"""Which chart technology for `harness site`: page weight and load time of the same charts, three ways.

The same two overlaid partial-rewriting charts (every method × top-scoring/random × fractions, with CI
bars where they exist) of a task's results are drawn by (a) the SVG `harness site` inlines (matplotlib's SVG
output, `harness/report/plots.py`, the engine that also draws the PNGs), (b) uPlot and (c) Chart.js, each
library inlined into the page as the site would have to. Each page is loaded
``--runs`` times in headless Chromium from file://; "drawn" is the first animation frame after the
charts exist (for the libraries, after their draw calls). Run:

    python benchmarks/site_charts.py --task smollm2-135m-l8-offline-mini [--libs DIR]

``--libs`` is a folder holding ``uPlot.iife.min.js``, ``uPlot.min.css`` and ``chart.umd.min.js``; without it
the script fetches uplot@1.6.32 and chart.js@4.5.1 with ``npm pack`` (measurement only: the site itself
inlines neither).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from harness.report.failures import load_with_side
from harness.report.leaderboard import collect_results
from harness.report.plots import Series, curve_points
from harness.report.site import PALETTE, line_chart, page
from harness.task.spec import load_task

if TYPE_CHECKING:
    from tests.cdp import Browser

ROOT = Path(__file__).resolve().parent.parent


def browser() -> Browser:
    """The headless Chromium driver of the site's browser test (tests/cdp.py, standard library only). tests/ is
    not part of the installed package, so the module is loaded from its file."""
    spec = importlib.util.spec_from_file_location("cdp", ROOT / "tests" / "cdp.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {ROOT / 'tests' / 'cdp.py'}")
    cdp = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cdp
    spec.loader.exec_module(cdp)
    return cdp.Browser()


DRAWN = "<script>requestAnimationFrame(function(){window.__drawn=performance.now();});</script>"


def chart_data(results: str, task: str):
    spec = load_task(task)
    rows, _ = collect_results(results, spec.id, task_hashes={spec.id: spec.hash},
                              fixed_cascade={spec.id} if spec.simulator.cascade else set())
    charts = []
    for key in ("recovery", "delta_ce_median"):
        series = []
        for k, r in enumerate(rows):
            conds = load_with_side(r.path, require_side=False).result.conditions
            for sel, dash in (("top-scoring", False), ("random", True)):
                x, v, lo, hi = curve_points(conds, "simulated", sel, key)
                points = [(float(a), float(b), float(c), float(d)) for a, b, c, d in zip(x, v, lo, hi, strict=True)]
                series.append(Series(f"{r.method} · {sel}", PALETTE[k % len(PALETTE)], points, dash))
        charts.append((key, series))
    return spec, charts


def svg_page(charts) -> str:
    body = "".join(line_chart(s, xlabel="fraction of latents rewritten", ylabel=k, xdomain=(0, 1.05))
                   for k, s in charts)
    return page("svg", body, [("svg", None)]).replace("</body>", DRAWN + "</body>")


def _js_data(charts):
    return json.dumps([{"key": k, "series": [{"name": s.name, "colour": s.colour, "dash": s.dash,
                                               "x": [p[0] for p in s.points],
                                               "y": [p[1] if p[1] == p[1] else None for p in s.points]}
                                              for s in ss]} for k, ss in charts])


# Each library page's drawing script, after `var D=<the charts as JSON>;`.
UPLOT_DRAW = """D.forEach(function(c){var d=document.createElement('div');document.querySelector('main').appendChild(d);
 var data=[c.series[0].x].concat(c.series.map(function(s){return s.y;}));
 new uPlot({width:560,height:300,title:c.key,series:[{}].concat(c.series.map(function(s){
  return {label:s.name,stroke:s.colour,dash:s.dash?[6,4]:undefined};}))},data,d);});
"""

CHARTJS_DRAW = """D.forEach(function(c){var cv=document.createElement('canvas');cv.width=560;cv.height=300;
 document.querySelector('main').appendChild(cv);
 new Chart(cv,{type:'line',options:{animation:false,responsive:false},data:{labels:c.series[0].x,
  datasets:c.series.map(function(s){return {label:s.name,data:s.y,borderColor:s.colour,
   borderDash:s.dash?[6,4]:[]};})}});});
"""


def uplot_page(charts, js: str, css: str) -> str:
    draw = f"\nvar D={_js_data(charts)};{UPLOT_DRAW}"
    return page("uplot", "", [("uplot", None)]).replace(
        "</head>", f"<style>{css}</style></head>").replace("</body>", f"<script>{js}</script><script>{draw}</script>"
                                                             + DRAWN + "</body>")


def chartjs_page(charts, js: str) -> str:
    draw = f"\nvar D={_js_data(charts)};{CHARTJS_DRAW}"
    return page("chartjs", "", [("chartjs", None)]).replace(
        "</body>", f"<script>{js}</script><script>{draw}</script>" + DRAWN + "</body>")


def npm_libs(dest: Path) -> Path:
    for pkg, files in (("uplot@1.6.32", ("uPlot.iife.min.js", "uPlot.min.css")), ("chart.js@4.5.1",
                                                                                 ("chart.umd.min.js",))):
        out = subprocess.run(["npm", "pack", pkg, "--silent"], cwd=dest, capture_output=True, text=True, check=True)
        with tarfile.open(dest / out.stdout.strip().splitlines()[-1]) as t:
            for f in files:
                member = t.extractfile(f"package/dist/{f}")
                if member is None:
                    raise FileNotFoundError(f"{pkg}: package/dist/{f} is not a regular file")
                (dest / f).write_bytes(member.read())
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="smollm2-135m-l8-offline-mini")
    ap.add_argument("--results", default="results")
    ap.add_argument("--libs")
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args()
    spec, charts = chart_data(a.results, a.task)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        libs = Path(a.libs) if a.libs else npm_libs(tmp)
        pages = {"SVG of harness site (matplotlib, inlined)": svg_page(charts),
                 "uPlot 1.6.32 inlined": uplot_page(charts, (libs / "uPlot.iife.min.js").read_text(),
                                                    (libs / "uPlot.min.css").read_text()),
                 "Chart.js 4.5.1 inlined": chartjs_page(charts, (libs / "chart.umd.min.js").read_text())}
        print(f"{spec.id}: two overlaid curve charts, {sum(len(s) for _, s in charts)} series; "
              f"median of {a.runs} loads from file:// in headless Chromium\n")
        print("| page | weight (KB) | gzip (KB) | load event (ms) | charts drawn (ms) |")
        print("|---|---:|---:|---:|---:|")
        with browser() as b:
            b.viewport(1280, 900)
            for name, text in pages.items():
                f = tmp / f"{abs(hash(name))}.html"
                f.write_text(text, encoding="utf-8")
                loads, drawn = [], []
                for _ in range(a.runs):
                    b.goto(f.as_uri())
                    for _ in range(50):
                        if b.eval("window.__drawn") is not None:
                            break
                    drawn.append(b.eval("window.__drawn"))
                    loads.append(b.eval("performance.getEntriesByType('navigation')[0].loadEventEnd"))
                errs = b.errors()
                raw = len(text.encode())
                gz = len(gzip.compress(text.encode()))
                print(f"| {name} | {raw / 1024:.1f} | {gz / 1024:.1f} | {statistics.median(loads):.1f} | "
                      f"{statistics.median(drawn):.1f} |" + (f" errors: {errs}" if errs else ""))


if __name__ == "__main__":
    main()
