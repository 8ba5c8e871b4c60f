"""Leaderboards built from result files (PROTOCOL §7).

Only results whose task hash equals the task's current hash are ranked: a result computed under an
older task definition (other model, splits, prompt...) measured something else. Those, and files
that are not readable harness results, come back as ``rejected`` with the reason, never silently
dropped. Re-running the same submission with the same simulator and prompt keeps only the newest
result.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.checks import one_line
from harness.errors import HarnessError
from harness.results import Result, atomic_write_text, load_result

NAN = math.nan

COLUMNS = (
    "method",
    "recovery",
    "ΔCE median (simulated)",
    "ΔCE median (latent zero)",
    "simulated − latent zero (mean)",
    "sensitivity",
    "specificity",
    "detection AUROC",
    "coverage",
    "simulator",
    "date",
)

COLUMNS_HELP = (
    "recovery = (CE(latent zero) − CE(simulated)) / (CE(latent zero) − CE(coder)): 1 is as good as the true latents, "
    "0 no better than deleting them; ΔCE are medians over test contexts in nats vs the clean model; "
    "simulated − latent zero is the mean paired CE difference (negative is better); "
    "sensitivity/specificity are macro-averaged over latents; brackets are 95% bootstrap CIs; "
    "coverage is the fraction of rewritten latents the submission explains."
)


@dataclass
class Row:
    task_id: str
    task_hash: str
    method: str
    recovery: dict[str, float]
    delta_ce_median_simulated: dict[str, float]
    delta_ce_median_latent_zero: dict[str, float]
    sim_minus_zero_mean: dict[str, float]
    sensitivity: float
    specificity: float
    detection_auroc: float
    coverage: float
    model_key: str
    prompt_version: str
    date: str
    submission_sha256: str
    path: str

    @property
    def simulator(self) -> str:
        return f"{_short_model_key(self.model_key)} ({self.prompt_version})"


@dataclass
class Rejected:
    path: str
    reason: str


def _est(d: Any) -> dict[str, float]:
    if not isinstance(d, dict):
        return {"value": NAN, "lo": NAN, "hi": NAN}
    return {k: _num(d.get(k)) for k in ("value", "lo", "hi")}


def _num(x: Any) -> float:
    try:
        return NAN if x is None else float(x)
    except (TypeError, ValueError):
        return NAN


def _parse_date(s: str) -> _dt.datetime:
    try:
        d = _dt.datetime.fromisoformat(s)
    except (TypeError, ValueError):
        # undated results lose every tie against dated ones
        return _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
    return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)


def row_from_result(res: Result, path: str) -> Row:
    h = res.headline
    return Row(
        task_id=res.task["id"],
        task_hash=res.task["hash"],
        # Stored text is whatever a submitter wrote: one printable line, so no table or terminal can break.
        method=one_line(str(res.submission.get("method", "?"))),
        recovery=_est(h.get("recovery")),
        delta_ce_median_simulated=_est(h.get("delta_ce_median")),
        delta_ce_median_latent_zero=_est(h.get("latent_zero_delta_ce_median")),
        sim_minus_zero_mean=_est(h.get("sim_minus_zero_mean")),
        sensitivity=_num(h.get("sensitivity")),
        specificity=_num(h.get("specificity")),
        detection_auroc=_num(h.get("detection_auroc")),
        coverage=_num(res.submission.get("coverage")),
        model_key=one_line(str(res.simulator.get("model_key", "?"))),
        prompt_version=one_line(str(res.simulator.get("prompt_version", "?"))),
        date=one_line(str(res.provenance.get("date", ""))),
        submission_sha256=str(res.submission.get("sha256", "")),
        path=path,
    )


def collect_results(
    results_dir: str | os.PathLike,
    task_id: str | None = None,
    *,
    task_hashes: dict[str, str],
) -> tuple[list[Row], list[Rejected]]:
    """Rows (newest per task × submission × simulator × prompt, best recovery first) and rejections.

    ``task_hashes`` maps every known task id to its current hash. With ``task_id`` set, results of
    other tasks are skipped without being reported.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise HarnessError(f"{root}: results folder not found — run `harness eval` first or pass the right folder")
    rejected: list[Rejected] = []
    newest: dict[tuple[str, str, str, str], Row] = {}
    for p in sorted(root.rglob("*.json")):
        if not p.is_file():
            continue
        try:
            res = load_result(p)
        except HarnessError as e:
            rejected.append(Rejected(str(p), str(e).removeprefix(f"{p}: ")))
            continue
        tid, thash = res.task["id"], res.task["hash"]
        if task_id is not None and tid != task_id:
            continue
        if tid not in task_hashes:
            rejected.append(Rejected(str(p), f"task {tid!r} is not a known task"))
            continue
        if thash != task_hashes[tid]:
            rejected.append(
                Rejected(
                    str(p),
                    f"task hash {thash[:12]} differs from the current {tid} hash "
                    f"{task_hashes[tid][:12]} (the task changed since this result) — re-run `harness eval`",
                )
            )
            continue
        row = row_from_result(res, str(p))
        key = (tid, row.submission_sha256, row.model_key, row.prompt_version)
        old = newest.get(key)
        if old is None or _parse_date(row.date) >= _parse_date(old.date):
            newest[key] = row
    rows = sort_rows(list(newest.values()))
    return rows, rejected


def sort_rows(rows: list[Row]) -> list[Row]:
    def key(r: Row):
        v = r.recovery["value"]
        return (math.isnan(v), -v if not math.isnan(v) else 0.0, r.method)

    return sorted(rows, key=key)


def _short_model_key(k: str) -> str:
    # "hub:org/name@<40 hex>" is unreadable in a table; 7 hex digits identify a commit in practice.
    if "@" in k:
        head, rev = k.rsplit("@", 1)
        return f"{head}@{rev[:7]}"
    return k


def fmt_num(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def fmt_est(e: dict[str, float], digits: int = 2) -> str:
    if math.isnan(e["value"]):
        return "n/a"
    if math.isnan(e["lo"]) or math.isnan(e["hi"]):
        return fmt_num(e["value"], digits)
    return f"{e['value']:.{digits}f} [{e['lo']:.{digits}f}, {e['hi']:.{digits}f}]"


def _display_cells(r: Row) -> list[str]:
    return [
        r.method,
        fmt_est(r.recovery, 2),
        fmt_est(r.delta_ce_median_simulated, 3),
        fmt_est(r.delta_ce_median_latent_zero, 3),
        fmt_est(r.sim_minus_zero_mean, 3),
        fmt_num(r.sensitivity, 2),
        fmt_num(r.specificity, 2),
        fmt_num(r.detection_auroc, 2),
        "n/a" if math.isnan(r.coverage) else f"{100 * r.coverage:.0f}%",
        r.simulator,
        r.date[:10],
    ]


def _multi_task(rows: list[Row]) -> bool:
    return len({r.task_id for r in rows}) > 1


def _display_table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    headers = list(COLUMNS)
    body = [_display_cells(r) for r in rows]
    if _multi_task(rows):
        headers = ["task", *headers]
        body = [[r.task_id, *cells] for r, cells in zip(rows, body)]
    return headers, body


# CSV is for machines: raw numbers with CI bounds in their own columns, full ids.
CSV_COLUMNS = (
    "task", "task_hash", "method",
    "recovery", "recovery_lo", "recovery_hi",
    "delta_ce_median_simulated", "delta_ce_median_simulated_lo", "delta_ce_median_simulated_hi",
    "delta_ce_median_latent_zero", "delta_ce_median_latent_zero_lo", "delta_ce_median_latent_zero_hi",
    "sim_minus_zero_mean", "sim_minus_zero_mean_lo", "sim_minus_zero_mean_hi",
    "sensitivity", "specificity", "detection_auroc", "coverage",
    "simulator_model_key", "prompt_version", "date", "submission_sha256",
)  # fmt: skip


def _csv_num(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def _csv_row(r: Row) -> list[str]:
    out = [r.task_id, r.task_hash, r.method]
    for e in (r.recovery, r.delta_ce_median_simulated, r.delta_ce_median_latent_zero, r.sim_minus_zero_mean):
        out += [_csv_num(e["value"]), _csv_num(e["lo"]), _csv_num(e["hi"])]
    out += [_csv_num(x) for x in (r.sensitivity, r.specificity, r.detection_auroc, r.coverage)]
    out += [r.model_key, r.prompt_version, r.date, r.submission_sha256]
    return out


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*[]<>|"})


def render(rows: list[Row], fmt: str = "md") -> str:
    if fmt == "md":
        headers, body = _display_table(rows)
        # A method named "a|b" or "[x](url)" is text, not table structure or a link.
        free = [i for i, h in enumerate(headers) if h in ("task", "method")]
        body = [[c.translate(_MD_SPECIAL) if i in free else c for i, c in enumerate(cells)] for cells in body]
        return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    if fmt == "html":
        headers, body = _display_table(rows)
        return tabulate(body, headers=headers, tablefmt="html", disable_numparse=True)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        w.writerows(_csv_row(r) for r in rows)
        return buf.getvalue()
    raise HarnessError(f"leaderboard format {fmt!r} is not one of md, csv, html")


def render_page(task_id: str, task_hash: str, rows: list[Row]) -> str:
    lines = [
        f"# Leaderboard: {task_id}",
        "",
        f"Task hash: `{task_hash}`",
        "",
        COLUMNS_HELP,
        "",
        render(rows, "md") if rows else "_No results for this task yet._",
        "",
    ]
    return "\n".join(lines)


def write_leaderboard(
    task_id: str,
    rows: list[Row],
    out_dir: str | os.PathLike = "leaderboard",
    *,
    task_hash: str | None = None,
) -> Path:
    """Write ``<out_dir>/<task_id>.md``; rows of other tasks are left out."""
    rows = [r for r in rows if r.task_id == task_id]
    if task_hash is None:
        task_hash = rows[0].task_hash if rows else "unknown"
    return atomic_write_text(Path(out_dir) / f"{task_id}.md", render_page(task_id, task_hash, rows))


def print_rich(rows: list[Row], console=None, *, title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(markup=False, emoji=False)
    headers, body = _display_table(rows)
    if console.width < 160:
        # A narrow terminal squeezes every cell to an ellipsis: keep the scores, drop the bookkeeping.
        keep = [i for i, h in enumerate(headers) if h not in ("simulator", "date")]
        headers = [headers[i] for i in keep]
        body = [[cells[i] for i in keep] for cells in body]
    table = Table(title=title, show_lines=False)
    for h in headers:
        table.add_column(h, justify="left" if h in ("task", "method", "simulator", "date") else "right")
    for cells in body:
        table.add_row(*cells)
    console.print(table)
