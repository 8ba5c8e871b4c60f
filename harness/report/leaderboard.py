"""Leaderboards built from result files (docs/protocol.md §7).

Rows are ranked by the headline paired difference "simulated − latent zero" (mean CE, nats; lower is
better), which always has a bootstrap CI, not by recovery, whose denominator can sit at 0. Each row is
compared with the row above on the same test contexts (paired per-context difference of their
"simulated − latent zero", from the side files): when that difference's CI contains 0 the row shares the
rank of the row above and is marked "=" — the data do not order the two. A task whose `scoring.rank_by`
is "detection_auroc" (one too small for CE to order anything) ranks by mean detection AUROC instead,
higher first, paired per latent over the latents both rows scored.

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
import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from harness.environment import compared, differences, package_changes, reference_index
from harness.errors import HarnessError
from harness.io import atomic_write_text, one_line
from harness.names import RankMetric
from harness.report.format import interval, number
from harness.result import (
    ORACLE_FILE,
    SIDE,
    DamagedResult,
    DamagedSideFile,
    Interval,
    Result,
    load_result,
    read_side_file,
)
from harness.terminal import Column, fits, markdown, print_table
from harness.terminal import console as safe_console

NAN = math.nan

ENV_MARK = "†"
ENV_HELP = (
    f"{ENV_MARK} computed in another environment than the task's reference row (its `top-tokens` result, else "
    "the environment most rows share): installed packages, torch, transformers, device, kernel path or thread "
    "count differ, so its numbers may differ from a reference-environment run in the last digits "
    "(docs/protocol-choices.md, Tolerances)."
)
_ENV_FIELD_NAMES = {"packages_sha256": "installed packages", "kernel": "kernel path", "threads": "thread count"}


def _env_field(field: str, row: Row) -> str:
    name = _ENV_FIELD_NAMES.get(field, field)
    if field == "packages_sha256" and row.package_changes:
        shown = row.package_changes[:4] + ([f"{len(row.package_changes) - 4} more"] if len(row.package_changes) > 4 else [])
        return f"{name} ({', '.join(shown)})"
    return name


def env_help(rows: Sequence[Row]) -> str:
    """ENV_HELP plus, per marked row, what differs: a reader can tell a package set from a kernel path."""
    marked = [f"{r.method}: {', '.join(_env_field(f, r) for f in r.env_differs)}" for r in rows if r.env_differs]
    return f"{ENV_HELP} Here: {'; '.join(marked)}." if marked else ""

RANK_METRIC = "simulated − latent zero (mean)"

COLUMNS = (
    "rank",
    "method",
    RANK_METRIC,
    "recovery",
    "ΔCE median (simulated)",
    "ΔCE median (latent zero)",
    "sensitivity",
    "specificity",
    "detection AUROC",
    "balanced accuracy",
    "coverage",
    "simulator",
    "date",
)

RANK_BY_CE_HELP = (
    "Rows are ranked by simulated − latent zero, the mean paired CE difference in nats over test contexts "
    "(negative: the simulated latents do better than deleting them), with its 95% percentile-bootstrap CI. "
    "A rank marked = means the paired difference with the row above has a 95% CI containing 0: the data do "
    "not order those two rows (? : could not be tested, side file missing)."
)
COLUMNS_HELP = (
    "recovery = (CE(latent zero) − CE(simulated)) / (CE(latent zero) − CE(coder)), 1 as good as the true "
    "latents, 0 no better than deleting them, with Fieller's 95% CI; 'unbounded' when the denominator is not "
    "significantly different from 0 (then recovery orders nothing). ΔCE are medians over test contexts in nats "
    "vs the clean model, with distribution-free order-statistic 95% CIs. Sensitivity, specificity, detection "
    "AUROC and balanced accuracy are macro-averages over latents, shown without interval (point values; the "
    "per-latent tables are in the result files). Coverage is the fraction of rewritten latents the submission explains."
)


@dataclass
class Row:
    task_id: str
    task_hash: str
    method: str
    recovery: Interval                         # its note says why it is unbounded or undefined
    delta_ce_median_simulated: Interval
    delta_ce_median_latent_zero: Interval
    sim_minus_zero_mean: Interval
    sensitivity: float
    specificity: float
    detection_auroc: float
    coverage: float
    model_key: str
    prompt_version: str
    date: str
    submission_sha256: str
    path: str
    balanced_accuracy: float = NAN
    side_file: str = ""                        # per-context side file, for the paired test with the row above
    boot: tuple[int, int] = (1000, 0)          # (draws, seed) the result's intervals used
    legacy: bool = False                       # written before results named their interval methods
    detection_auroc_ci: Interval | None = None # over latents, when the result has it
    per_latent_auroc: dict[int, float] | None = None
    rank_by: RankMetric = "sim_minus_zero"
    rank: str = ""                             # "3", or "=2" when tied with the row above, "?2" when untested
    vs_above: Interval | None = None           # mean paired difference with the row above, with CI
    rank_series: np.ndarray | None = None      # per-context simulated − latent zero, read once from the side file
    environment: dict[str, str] | None = None  # recorded environment fields (harness/environment.py)
    env_differs: list[str] | None = None       # fields differing from the task's reference row; [] = same
    packages: list[str] | None = None          # installed name==version lines, where the result records them
    package_changes: list[str] | None = None   # how they differ from the reference row's (both recorded)

    @property
    def method_cell(self) -> str:
        return f"{self.method} {ENV_MARK}" if self.env_differs else self.method

    @property
    def simulator(self) -> str:
        return f"{_short_model_key(self.model_key)} ({self.prompt_version})"


@dataclass
class Rejected:
    path: str
    reason: str
    damaged: bool = False   # it or its side file cannot be read: said by every reader, eval's leaderboard step too


def _parse_date(s: str) -> _dt.datetime:
    try:
        d = _dt.datetime.fromisoformat(s)
    except (TypeError, ValueError):
        # undated results lose every tie against dated ones
        return _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
    return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)


def row_from_result(res: Result, path: str) -> Row:
    h, sub_, sim, prov = res.headline, res.submission, res.simulator, res.provenance
    # Results written before `methods` existed used 1,000 draws with the run's seed.
    draws, seed = ((res.methods.intervals.bootstrap.draws, res.methods.intervals.bootstrap.seed) if res.methods
                   else (1000, prov.seed))
    side = res.side_files.per_context.path
    return Row(
        detection_auroc_ci=h.detection_auroc_ci,
        per_latent_auroc={int(j): float(a) for j, a in zip(res.per_latent.latent, res.per_latent.auroc, strict=True)},
        rank_by=h.rank_by,
        legacy=not res.methods,
        balanced_accuracy=h.detection_balanced_accuracy,
        side_file=str(Path(path).parent / side) if side else "",
        boot=(draws, seed),
        task_id=res.task.id,
        task_hash=res.task.hash,
        # Stored text is whatever a submitter wrote: one printable line, so no table or terminal can break.
        method=one_line(sub_.method),
        recovery=h.recovery,
        delta_ce_median_simulated=h.delta_ce_median,
        delta_ce_median_latent_zero=h.latent_zero_delta_ce_median,
        sim_minus_zero_mean=h.sim_minus_zero_mean,
        sensitivity=h.sensitivity,
        specificity=h.specificity,
        detection_auroc=h.detection_auroc,
        coverage=sub_.coverage,
        model_key=one_line(sim.model_key),
        prompt_version=one_line(sim.prompt_version),
        date=one_line(prov.date),
        submission_sha256=sub_.sha256,
        path=path,
        environment=compared(prov),
        packages=list(prov.packages) or None,
    )


def collect_results(
    results_dir: str | os.PathLike,
    task_id: str | None = None,
    *,
    task_hashes: dict[str, str],
    fixed_cascade: Collection[str] = (),
) -> tuple[list[Row], list[Rejected]]:
    """Rows (newest per task × submission × simulator × prompt, best recovery first) and rejections.

    ``task_hashes`` maps every known task id to its current hash. With ``task_id`` set, results of
    other tasks are skipped without being reported. ``fixed_cascade``: ids of tasks whose spec fixes the
    cascade (`[simulator] cascade`), whose every result is a cascade run made the same way, so ranked.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise HarnessError(f"{root}: results folder not found — run `harness eval` first or pass --results DIR")
    rejected: list[Rejected] = []
    newest: dict[tuple[str, str, str, str], Row] = {}
    for p in sorted(root.rglob("*.json")):
        # The noisy-oracle reference (harness/oracle.py) sits beside the results but is never ranked.
        if not p.is_file() or p.name == ORACLE_FILE:
            continue
        try:
            res = load_result(p)
        except HarnessError as e:
            rejected.append(Rejected(str(p), str(e).removeprefix(f"{p}: "), damaged=isinstance(e, DamagedResult)))
            continue
        tid, thash = res.task.id, res.task.hash
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
        if res.cascade and tid not in fixed_cascade:
            # An approximation of the exhaustive result (harness/simulate/cascade.py): not ranked beside them.
            # A task that fixes its cascade has no exhaustive results: its hash (matched above) pins the cascade.
            rejected.append(Rejected(str(p), "a cascade result (eval --cascade): leaderboards rank exhaustive runs only"))
            continue
        row = row_from_result(res, str(p))
        if row.side_file and Path(row.side_file).is_file():
            # Read here, once: a damaged side file rejects its row with one line instead of breaking
            # the table (and the site, and every later eval into this folder) with a zip traceback.
            try:
                row.rank_series = _rank_series_of(read_side_file(row.side_file, RANK_KEYS))
            except DamagedSideFile as e:
                rejected.append(Rejected(str(p), str(e), damaged=True))
                continue
        key = (tid, row.submission_sha256, row.model_key, row.prompt_version)
        old = newest.get(key)
        if old is None or _parse_date(row.date) >= _parse_date(old.date):
            newest[key] = row
    rows = mark_environments(mark_ties(sort_rows(name_duplicates(list(newest.values())))))
    return rows, rejected


def name_duplicates(rows: list[Row]) -> list[Row]:
    """Rows of one task and simulator whose submissions differ but whose method names are the same would be
    indistinguishable: each such name gets its submission's sha256 prefix, e.g. `top-tokens (3f41a2c9)`."""
    groups: dict[tuple[str, str, str, str], set[str]] = {}
    for r in rows:
        groups.setdefault((r.task_id, r.model_key, r.prompt_version, r.method), set()).add(r.submission_sha256)
    for r in rows:
        if len(groups[(r.task_id, r.model_key, r.prompt_version, r.method)]) > 1:
            r.method = f"{r.method} ({r.submission_sha256[:8]})"
    return rows


def mark_environments(rows: list[Row]) -> list[Row]:
    """Fill `env_differs`: per task, the fields in which each row's environment differs from the task's
    reference row (environment.reference_index)."""
    for tid in dict.fromkeys(r.task_id for r in rows):
        group = [r for r in rows if r.task_id == tid]
        envs = [r.environment or {} for r in group]
        ref = reference_index([r.method for r in group], envs, [r.date for r in group])
        for r, env in zip(group, envs, strict=True):
            r.env_differs = differences(env, envs[ref]) if ref is not None else []
            theirs = group[ref].packages if ref is not None else None
            if "packages_sha256" in r.env_differs and r.packages and theirs:
                r.package_changes = package_changes(r.packages, theirs)
    return rows


def sort_rows(rows: list[Row]) -> list[Row]:
    """Best first by the ranking metric (lower simulated − latent zero); recovery, then name, break exact ties."""
    def key(r: Row):
        v = r.sim_minus_zero_mean.value if r.rank_by != "detection_auroc" else -r.detection_auroc
        rec = r.recovery.value
        return (r.task_id, math.isnan(v), v if not math.isnan(v) else 0.0,
                -rec if not math.isnan(rec) else math.inf, r.method)

    return sorted(rows, key=key)


RANK_KEYS = (SIDE.ce_simulated_all, SIDE.ce_latent_zero_all)


def _rank_series_of(side: Mapping[str, np.ndarray]) -> np.ndarray:
    return side[SIDE.ce_simulated_all] - side[SIDE.ce_latent_zero_all]


def _rank_series(r: Row) -> np.ndarray | None:
    if r.rank_series is not None:
        return r.rank_series
    if not r.side_file:
        return None
    try:
        return _rank_series_of(read_side_file(r.side_file, RANK_KEYS))
    except DamagedSideFile:
        return None


def mark_ties(rows: list[Row]) -> list[Row]:
    """Fill `rank` and `vs_above`: each row against the row above (same task), paired over test contexts
    (or over latents, for a task ranked by detection AUROC)."""
    import numpy as np

    from harness.score.metrics import bootstrap_indices, mean_ci

    prev: Row | None = None
    pos = 0
    group = 0
    for r in rows:
        if prev is None or prev.task_id != r.task_id:
            pos, group, prev = 1, 1, r
            r.rank, r.vs_above = "1", None
            continue
        pos += 1
        if r.rank_by == "detection_auroc":
            # Per latent (higher is better): prev − r over the latents both scored with a finite AUROC.
            pa, pb = prev.per_latent_auroc or {}, r.per_latent_auroc or {}
            both = [j for j in pa if j in pb and math.isfinite(pa[j]) and math.isfinite(pb[j])]
            a = np.asarray([pa[j] for j in both]) if len(both) >= 2 else None
            b = np.asarray([pb[j] for j in both]) if len(both) >= 2 else None
        else:
            a, b = _rank_series(r), _rank_series(prev)
        if a is None or b is None or a.shape != b.shape or math.isnan(r.sim_minus_zero_mean.value):
            r.rank, r.vs_above = f"?{group}", None   # untested: keep the group, say so
        else:
            draws, seed = r.boot
            e = mean_ci(a - b, bootstrap_indices(len(a), draws, seed))
            r.vs_above = e
            if e.lo <= 0.0 <= e.hi:
                r.rank = f"={group}"
            else:
                group = pos
                r.rank = str(group)
        prev = r
    return rows


def _short_model_key(k: str) -> str:
    # "hub:org/name@<40 hex>" is unreadable in a table; 7 hex digits identify a commit in practice.
    if "@" in k:
        head, rev = k.rsplit("@", 1)
        return f"{head}@{rev[:7]}"
    return k


def _display_cells(r: Row) -> list[str]:
    return [
        r.rank,
        r.method_cell,
        interval(r.sim_minus_zero_mean, 4),
        interval(r.recovery, 2),
        interval(r.delta_ce_median_simulated, 3),
        interval(r.delta_ce_median_latent_zero, 3),
        number(r.sensitivity, 2),
        number(r.specificity, 2),
        interval(r.detection_auroc_ci, 2) if r.detection_auroc_ci else number(r.detection_auroc, 2),
        number(r.balanced_accuracy, 2),
        "n/a" if math.isnan(r.coverage) else f"{100 * r.coverage:.0f}%",
        r.simulator,
        r.date[:10],
    ]


def _multi_task(rows: list[Row]) -> bool:
    return len({r.task_id for r in rows}) > 1


def _display_table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    headers: list[str] = list(COLUMNS)
    body = [_display_cells(r) for r in rows]
    if _multi_task(rows):
        headers = ["task", *headers]
        body = [[r.task_id, *cells] for r, cells in zip(rows, body, strict=True)]
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
    "rank", "vs_above_mean", "vs_above_lo", "vs_above_hi", "balanced_accuracy", "recovery_note",
    "environment_differs",
)  # fmt: skip


def _csv_num(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def _csv_row(r: Row) -> list[str]:
    out = [r.task_id, r.task_hash, r.method]
    for e in (r.recovery, r.delta_ce_median_simulated, r.delta_ce_median_latent_zero, r.sim_minus_zero_mean):
        out += [_csv_num(e.value), _csv_num(e.lo), _csv_num(e.hi)]
    out += [_csv_num(x) for x in (r.sensitivity, r.specificity, r.detection_auroc, r.coverage)]
    out += [r.model_key, r.prompt_version, r.date, r.submission_sha256]
    v = r.vs_above or Interval(NAN, NAN, NAN)
    out += [r.rank] + [_csv_num(x) for x in (v.value, v.lo, v.hi)]
    out += [_csv_num(r.balanced_accuracy), r.recovery.note, ";".join(r.env_differs or [])]
    return out


KEY_COLUMNS = ("task", "method", "rank")   # printed whole in every layout


def _columns(headers: list[str]) -> list[Column]:
    return [Column(h, key=h in KEY_COLUMNS, numeric=h not in ("task", "method", "simulator", "date"))
            for h in headers]


def render(rows: list[Row], fmt: str = "md") -> str:
    if fmt == "md":
        headers, body = _display_table(rows)
        return markdown(_columns(headers), body)
    if fmt == "html":
        headers, body = _display_table(rows)
        return tabulate(body, headers=headers, tablefmt="html", disable_numparse=True)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        w.writerows(_csv_row(r) for r in rows)
        return buf.getvalue()
    if fmt == "json":
        return json.dumps(to_json(rows), indent=1, ensure_ascii=False, allow_nan=False)
    raise HarnessError(f"leaderboard format {fmt!r} is not one of md, csv, html, json")


LEGACY_HELP = (
    "Rows from results written before results named their interval methods (no `methods` section) carry "
    "that harness's intervals: percentile bootstrap with 1000 draws for the medians, and no recovery CI "
    "where a resample's denominator reached 0; rerun `harness eval` to get the intervals described above."
)


RANK_BY_AUROC_HELP = (
    "**This task ranks by detection AUROC** (`scoring.rank_by = \"detection_auroc\"`): at its size no CE "
    "quantity separates methods, so rows are ordered by mean per-latent detection AUROC, higher first, with a "
    "95% percentile-bootstrap CI over latents; a rank marked = means the paired per-latent difference with the "
    "row above has a 95% CI containing 0."
)


def rank_help(rows: list[Row]) -> str:
    """The ranking rule of the task these rows belong to, in words (Markdown)."""
    return RANK_BY_AUROC_HELP if any(r.rank_by == "detection_auroc" for r in rows) else RANK_BY_CE_HELP


def render_page(task_id: str, task_hash: str, rows: list[Row]) -> str:
    lines = [
        f"# Leaderboard: {task_id}",
        "",
        f"Task hash: `{task_hash}`",
        "",
        rank_help(rows),
        "",
        COLUMNS_HELP,
        "",
        *([LEGACY_HELP, ""] if any(r.legacy for r in rows) else []),
        *([env_help(rows), ""] if any(r.env_differs for r in rows) else []),
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


def _json_num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _json_est(e: Interval | None, **extra) -> dict | None:
    if e is None:
        return None
    return {"value": _json_num(e.value), "lo": _json_num(e.lo), "hi": _json_num(e.hi)} | extra


def row_json(r: Row) -> dict[str, Any]:
    """Every column of a row for scripts: numbers as numbers (null for n/a), intervals as {value, lo, hi}."""
    auroc = r.detection_auroc_ci or Interval(r.detection_auroc, NAN, NAN)
    mark = r.rank[:1] if r.rank[:1] in ("=", "?") else ""
    return {
        "task": r.task_id,
        "task_hash": r.task_hash,
        "rank": int(r.rank.lstrip("=?")) if r.rank.lstrip("=?").isdigit() else None,
        # True: the paired CI with the row above contains 0; None: not tested (first row, or no side file).
        "tied_with_above": {"=": True, "?": None}.get(mark, False if r.vs_above is not None else None),
        "rank_by": r.rank_by,
        "method": r.method,
        "sim_minus_zero_mean": _json_est(r.sim_minus_zero_mean),
        "recovery": _json_est(r.recovery, note=r.recovery.note),
        "delta_ce_median_simulated": _json_est(r.delta_ce_median_simulated),
        "delta_ce_median_latent_zero": _json_est(r.delta_ce_median_latent_zero),
        "sensitivity": _json_num(r.sensitivity),
        "specificity": _json_num(r.specificity),
        "detection_auroc": _json_est(auroc),
        "balanced_accuracy": _json_num(r.balanced_accuracy),
        "coverage": _json_num(r.coverage),
        "vs_above": _json_est(r.vs_above),
        "simulator_model_key": r.model_key,
        "prompt_version": r.prompt_version,
        "date": r.date,
        "submission_sha256": r.submission_sha256,
        "result": r.path,
        "environment": dict(r.environment or {}),
        # Fields differing from the task's reference row ([] = same environment, so far as both record it).
        "environment_differs": list(r.env_differs or []),
        "package_changes": list(r.package_changes or []),
    }


def to_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [row_json(r) for r in rows]


CAPTION = "= : not significantly different from the row above (paired 95% CI contains 0)"

# Dropped, in this order, from a terminal table too narrow for all of them (piped output keeps all).
_BOOKKEEPING = ("date", "simulator", "coverage", "balanced accuracy", "specificity", "sensitivity",
                "ΔCE median (latent zero)", "ΔCE median (simulated)")


def print_leaderboard(rows: list[Row], console=None, *, title: str | None = None, fmt: str = "auto") -> None:
    """The leaderboard by the rule of `harness.terminal`: Markdown when piped, a terminal table whose
    bookkeeping columns give way to a narrow width (rank, method and the scores stay), every id whole."""
    from rich.text import Text

    console = console or safe_console()
    if not rows:
        console.print(Text(f"{title + ': ' if title else ''}no results yet (`harness eval` writes them)"), soft_wrap=True)
        return
    headers, body = _display_table(rows)
    if fmt in ("rich", "auto") and (fmt == "rich" or console.is_terminal):
        for name in _BOOKKEEPING:
            if fits(console, _columns(headers), body):
                break
            keep = [i for i, h in enumerate(headers) if h != name]
            headers, body = [headers[i] for i in keep], [[cells[i] for i in keep] for cells in body]
    caption = CAPTION + (f"\n{env_help(rows)}" if any(r.env_differs for r in rows) else "")
    print_table(console, _columns(headers), body, title=title, caption=caption, fmt=fmt)
