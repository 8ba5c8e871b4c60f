"""`harness site` and `harness failures` on a tiny task: contents come from result + side files, text is escaped."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from tests.cdp import Browser, find_browser

HOSTILE_METHOD = '<script>alert("method")</script><b>bold</b>&amp;'
HOSTILE_EXPL = '</td></tr><img src=x onerror="alert(1)">[red]not markup[/red] "quotes" & \'apostrophes\''
TASK_ID = "tiny-llama-transcoder"


def _submission(path: Path, latents, text: str, method: str) -> Path:
    path.write_text(json.dumps({"task": TASK_ID, "method": method, "description": f"{method} <i>desc</i>",
                                "explanations": {str(j): text for j in latents}}))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two evaluated submissions (one with a hostile name and explanation) and the site built from them."""
    root = tmp_path_factory.mktemp("site")
    mp = pytest.MonkeyPatch()
    mp.setenv("HARNESS_CACHE", str(root / "cache"))
    try:
        assert main(["make-tiny-task", "-o", str(root / "task")]) == 0
        from harness.data.prepare import prepare
        from harness.task.spec import load_task

        latents = prepare(load_task(str(root / "task"))).rewritten
        subs = [_submission(root / "plain.json", latents, 'the tokens "the", "a"', "plain-method"),
                _submission(root / "hostile.json", latents, HOSTILE_EXPL, HOSTILE_METHOD),
                _submission(root / "digits.json", latents, "digits and numbers", "digits")]
        for s in subs:
            assert main(["eval", "--task", str(root / "task"), "--submission", str(s), "--results",
                         str(root / "results"), "--backend", "prefix"]) == 0
        assert main(["site", "--task", str(root / "task"), "--results", str(root / "results"),
                     "-o", str(root / "site")]) == 0
        yield root
    finally:
        mp.undo()


@pytest.fixture(autouse=True)
def _cache(built, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(built / "cache"))


def _results(root: Path) -> list[Path]:
    return sorted((root / "results" / TASK_ID).glob("*.json"))


def _pages(root: Path) -> list[Path]:
    return sorted((root / "site").rglob("*.html"))


def test_side_file_holds_test_windows_and_calibrated_predictions(built):
    from harness.data.prepare import prepare
    from harness.task.spec import load_task

    prep = prepare(load_task(str(built / "task")))
    for p in _results(built):
        r = json.loads(p.read_text())
        with np.load(p.parent / r["side_files"]["per_context"]["path"]) as z:
            assert z["test_windows"].dtype == np.int32
            np.testing.assert_array_equal(z["test_windows"], prep.splits["test"])
            assert z["sim_values__quantile"].shape == z["pred_test"].shape == z["true_test"].shape


def test_site_layout_and_numbers_come_from_results(built):
    site = built / "site"
    assert (site / "index.html").is_file()
    task_page = (site / TASK_ID / "index.html").read_text()
    results = [json.loads(p.read_text()) for p in _results(built)]
    # Rows in the leaderboard's order; the first interval column is the one the task ranks by (simulated − latent
    # zero here), each cell holding its result's value unrounded in data-v.
    from harness.report.leaderboard import collect_results
    from harness.task.spec import load_task

    spec = load_task(str(built / "task"))
    rows, _ = collect_results(built / "results", spec.id, task_hashes={spec.id: spec.hash})
    order = re.findall(r'<tr data-method="([^"]*)">.*?<td data-v="([^"]*)"><svg class="ci"', task_page)
    assert len(order) == 3
    by_method = {r["submission"]["method"]: r for r in results}
    shown = [(html.unescape(m), float(v)) for m, v in order]
    assert [m for m, _ in shown] == [r.method for r in rows]
    for method, v in shown:
        assert v == by_method[method]["headline"]["sim_minus_zero_mean"]["value"]
    header = re.findall(r"<th[^>]*>([^<]*)</th>", task_page.split("</thead>")[0])
    assert header[:3] == ["rank", "method", "simulated − latent zero (mean)"]
    assert "Rows are ranked by simulated − latent zero" in task_page and "ranks by detection AUROC" not in task_page
    # The "vs next" marks are the leaderboard's tie test: one per adjacent pair.
    n_marks = sum(task_page.count(f'title="{t}') for t in ("paired difference CI", "no paired test was possible"))
    assert n_marks == 2
    from harness.report.site import _safe

    for r, p in zip(results, _results(built)):
        mdir = site / TASK_ID / _safe(p.stem)
        assert (mdir / "index.html").is_file()
        for j in r["per_latent"]["latent"]:
            assert (mdir / f"latent-{j}.html").is_file()
        srcs = re.findall(r'<img src="([^"]+)"', (mdir / "index.html").read_text())
        assert len(srcs) == len(r["figures"]) == 3
        for src in srcs:
            assert (mdir / html.unescape(src)).read_bytes()[:4] == b"\x89PNG"
    # No page refers to anything outside the site: no http(s) URL in a src/href.
    for page in _pages(built):
        text = page.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), page
        assert text.count("<script") <= 1, page


def test_hostile_text_is_escaped_everywhere(built):
    pages = _pages(built)
    seen_method = seen_expl = False
    for page in pages:
        text = page.read_text()
        assert HOSTILE_METHOD not in text and HOSTILE_EXPL not in text
        assert "<img src=x" not in text and "<b>bold</b>" not in text and "<i>desc</i>" not in text
        seen_method |= html.escape(HOSTILE_METHOD, quote=True) in text
        seen_expl |= html.escape(HOSTILE_EXPL, quote=True) in text
    assert seen_method and seen_expl


def test_failure_report_matches_side_file(built):
    from harness.report.failures import latent_report, load_decoder, load_with_side, test_windows
    from harness.task.spec import load_task

    spec = load_task(str(built / "task"))
    decode, why = load_decoder(spec)
    assert decode is not None, why
    for p in _results(built):
        loaded = load_with_side(p)
        win, note = test_windows(loaded, spec)
        assert note == ""
        side = loaded.side
        for col, j in enumerate(int(x) for x in side["latents"]):
            rep = latent_report(loaded, j, windows=win, decode=decode, n=1000)
            true, sim, pred = side["true_test"][:, col], side["sim_values__quantile"][:, col], side["pred_test"][:, col]
            fired = side["active_sim__quantile"][:, col]
            assert [c.row for c in rep.false_positives] == sorted(
                np.flatnonzero(fired & (true == 0)), key=lambda r: (-pred[r], r))
            assert [c.row for c in rep.false_negatives] == sorted(
                np.flatnonzero(~fired & (true > 0)), key=lambda r: (-true[r], r))
            for c in rep.false_positives[:3] + rep.false_negatives[:3]:
                T = win.shape[1] - 1
                assert c.prefix + c.token == decode(win[c.row, :T])
                assert c.true == pytest.approx(true[c.row]) and c.pred == pytest.approx(pred[c.row])
            assert rep.n_true_active == int((true > 0).sum())


def test_latent_page_shows_marked_contexts(built):
    p = next(q for q in _results(built) if q.name.startswith("plain"))
    r = json.loads(p.read_text())
    mdir = built / "site" / TASK_ID / p.stem
    pages = [(mdir / f"latent-{j}.html").read_text() for j in r["per_latent"]["latent"]]
    assert any('<mark class="tok"' in t for t in pages)
    assert all("the tokens &quot;the&quot;, &quot;a&quot;" in t for t in pages)
    for i, j in enumerate(r["per_latent"]["latent"]):
        assert f"Latent {j} · plain-method" in pages[i]
        for k in ("auroc", "sensitivity", "specificity"):
            v = r["per_latent"][k][i]
            assert f"<dd>{'n/a' if v is None else f'{v:.3f}'}</dd>" in pages[i]


def test_failures_cli_fits_80_columns_and_prints_text_literally(built, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    p = next(q for q in _results(built) if not q.name.startswith("plain"))
    j = json.loads(p.read_text())["per_latent"]["latent"][0]
    import harness.cli as cli
    from rich.console import Console

    monkeypatch.setattr(cli, "console", Console(width=80, force_terminal=False))
    assert main(["failures", "--result", str(p), "--latent", str(j), "--task", str(built / "task")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "[red]not markup[/red]" in out          # rich markup in an explanation is text, not style
    assert "false positives" in out and "false negatives" in out
    assert "ctx" in out and "true" in out


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error:")
    return err[0]


def test_failures_cli_bad_input(built, capsys, tmp_path):
    assert main(["failures", "--result", str(tmp_path / "nope.json"), "--latent", "0"]) == 2
    assert "nope.json" in _one_error(capsys)
    p = _results(built)[0]
    assert main(["failures", "--result", str(p), "--latent", "999999", "--task", str(built / "task")]) == 2
    assert "latent 999999 is not scored" in _one_error(capsys)
    assert main(["site", "--task", str(built / "task"), "--results", str(tmp_path / "none"), "-o",
                 str(tmp_path / "s")]) == 2
    assert "results folder not found" in _one_error(capsys)


def test_ordering_marks_follow_the_leaderboard_ranks(built):
    """The site's "vs next" marks are the Markdown leaderboard's tie test, read from the ranked rows."""
    from harness.report.leaderboard import collect_results
    from harness.report.site import ordering_marks
    from harness.task.spec import load_task

    spec = load_task(str(built / "task"))
    rows, _ = collect_results(built / "results", spec.id, task_hashes={spec.id: spec.hash})
    marks = ordering_marks(rows)
    assert len(marks) == len(rows) and marks[-1][0] == ""
    for mark, nxt in zip(marks, rows[1:]):
        want = "≈" if nxt.rank.startswith("=") else ("?" if nxt.rank.startswith("?") else ">")
        assert mark[0] == want
        if nxt.vs_above is not None:
            assert f"[{nxt.vs_above.lo:.3f}, {nxt.vs_above.hi:.3f}]" in mark[1]


# ---------------------------------------------------------------- in a real browser


_NO_BROWSER = ("no Chromium found (apt-get install chromium, or point HARNESS_BROWSER at a Chrome/Chromium binary); "
               ".ci/run installs it")

_ROWS = "Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(function(r){return r.dataset.method;})"


def _column(i: int) -> str:
    """JavaScript reading the unrounded value (data-v) of cell i of every leaderboard row, in page order."""
    return ("Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(function(r){"
            f"return Number(r.cells[{i}].getAttribute('data-v'));}})")


_SIM_MINUS_ZERO = _column(2)   # the ranking column comes right after the method
_RECOVERY = _column(3)


# CI sets HARNESS_REQUIRE_BROWSER=1: there a missing browser fails the test instead of hiding it as a skip.
@pytest.mark.skipif(find_browser() is None and os.environ.get("HARNESS_REQUIRE_BROWSER") != "1", reason=_NO_BROWSER)
def test_site_in_headless_chromium(built, tmp_path):
    assert find_browser() is not None, f"HARNESS_REQUIRE_BROWSER=1 but {_NO_BROWSER}"
    shots = Path(os.environ.get("HARNESS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    site = built / "site"
    from harness.report.site import _safe

    hostile = next(p for p in _results(built) if json.loads(p.read_text())["submission"]["method"] == HOSTILE_METHOD)
    mdir = site / TASK_ID / _safe(hostile.stem)
    with Browser() as b:
        b.viewport(1366, 900)
        b.goto((site / "index.html").as_uri())
        assert b.eval("document.querySelectorAll('#tasks tbody tr').length") == 1
        b.click("#tasks tbody a")
        b.wait_event("Page.loadEventFired")
        assert b.eval("document.location.pathname").endswith(f"/{TASK_ID}/index.html")

        # The page arrives in the leaderboard's order (the ranking metric, simulated − latent zero, ascending);
        # clicking the recovery header sorts by recovery, ascending first, then descending.
        first = b.eval(_ROWS)
        assert len(first) == 3 and b.eval(_SIM_MINUS_ZERO) == sorted(b.eval(_SIM_MINUS_ZERO))
        vals = b.eval(_RECOVERY)
        b.click("#leaderboard thead th:nth-child(4)")
        assert b.eval(_RECOVERY) == sorted(vals)
        assert b.eval("document.querySelector('#leaderboard thead th:nth-child(4)').getAttribute('aria-sort')") \
            == "ascending"
        b.click("#leaderboard thead th:nth-child(4)")
        assert b.eval(_RECOVERY) == sorted(vals, reverse=True)
        b.click("#leaderboard thead th:nth-child(1)")   # back to the ranking
        assert b.eval(_ROWS) == first
        b.click("#leaderboard thead th:nth-child(2)")   # by method name
        assert b.eval(_ROWS) == sorted(first, key=lambda m: m.lower()) or b.eval(_ROWS) == sorted(first)
        assert HOSTILE_METHOD in b.eval(_ROWS)          # the name is text in the DOM, not markup
        assert b.eval("document.querySelectorAll('script').length") == 1
        assert b.eval("document.querySelectorAll('svg.chart').length") >= 4
        # At 1366 px the column the task ranks by is in view without scrolling the table.
        assert b.eval("document.querySelector('#leaderboard th.ranked').getBoundingClientRect().right") <= 1366
        b.screenshot(shots / "site-task.png")

        # Phone width: the page never scrolls sideways (wide tables scroll inside their own box).
        b.viewport(390, 844, mobile=True)
        b.goto((site / TASK_ID / "index.html").as_uri())
        assert b.eval("document.documentElement.scrollWidth") <= 390
        b.screenshot(shots / "site-task-phone.png")
        b.viewport(1280, 900)

        # The hostile method's pages: name and explanation are text, nothing of theirs runs or renders as HTML.
        b.goto((mdir / "index.html").as_uri())
        assert b.eval("document.querySelector('h1').textContent") == HOSTILE_METHOD
        assert b.eval("document.querySelectorAll('img[src=x], b').length") == 0
        lat = b.eval("document.querySelector('#latents tbody a').getAttribute('href')")
        b.goto((mdir / lat).as_uri())
        assert b.eval("document.getElementById('explanation').textContent") == HOSTILE_EXPL
        assert b.eval("document.querySelectorAll('mark.tok').length") >= 1
        b.screenshot(shots / "site-latent.png")

        # Per-latent table on the method page sorts numerically, missing values last.
        b.goto((mdir / "index.html").as_uri())
        b.click("#latents thead th:nth-child(3)")
        col = b.eval("Array.from(document.querySelectorAll('#latents tbody tr')).map(function(r){"
                     "var v=r.cells[2].getAttribute('data-v');return v===''?null:Number(v);})")
        present = [v for v in col if v is not None]
        assert present == sorted(present) and col[: len(present)] == present
        assert b.errors() == []
    assert (shots / "site-task.png").read_bytes()[:4] == b"\x89PNG"
