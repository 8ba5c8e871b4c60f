"""The Python API: the same calls the command line makes, for notebooks and scripts.

    import harness

    result = harness.evaluate("smollm2-135m-l8-offline-mini", "submissions/smollm2-135m-l8-offline-mini/top-tokens.json")
    print(result.headline.detection_auroc, result.headline.recovery)

    mine = harness.Submission.build("smollm2-135m-l8-offline-mini", "my-method", {3: "the token ' the'", 17: "..."})
    result = harness.evaluate("smollm2-135m-l8-offline-mini", mine)     # or a dict shaped like the file

    board = harness.leaderboard("smollm2-135m-l8-offline-mini")
    print(board.render("md"))
    harness.load_result("results/smollm2-135m-l8-offline-mini/<file>.json")

Each returns the typed objects of `harness.result` and `harness.report.leaderboard`; each failure is one
`HarnessError` line, as on the command line. `harness eval` and `harness leaderboard` call these functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.names import Backend

if TYPE_CHECKING:
    from harness.report.leaderboard import Rejected, Row
    from harness.result import Result
    from harness.task.spec import TaskSpec
    from harness.task.submission import Submission


def evaluate(task: str | os.PathLike | TaskSpec, submission: str | os.PathLike | Mapping[str, Any] | Submission, *,
             results_dir: str | os.PathLike = "results", backend: Backend = "auto", device: str = "auto",
             cascade: str | None = None, overrides: Sequence[str] = (), endpoints: Sequence[str] = (),
             served_model: str = "", command: str = "") -> Result:
    """Score a submission on a task (`harness eval`): the result is written to `results_dir/<task id>/` (its
    JSON, side file and figures; the file name is `result.side_files.per_context.path` less
    `.per_context.npz`, plus `.json`) and returned.

    `task`: a registered id, a task folder or a task.toml (or a `TaskSpec`, whose overrides are kept).
    `submission`: a file, a dict shaped like one, or a `Submission.build(...)`; each is checked alike.
    `cascade`: a cascade setting as `--cascade` takes it (`top=8,sample=0.02`), for a task that fixes none.
    """
    return evaluate_to_file(task, submission, results_dir=results_dir, backend=backend, device=device,
                            cascade=cascade, overrides=overrides, endpoints=endpoints, served_model=served_model,
                            command=command)[0]


def evaluate_to_file(task: str | os.PathLike | TaskSpec,
                     submission: str | os.PathLike | Mapping[str, Any] | Submission, *,
                     results_dir: str | os.PathLike = "results", backend: Backend = "auto", device: str = "auto",
                     cascade: str | None = None, overrides: Sequence[str] = (), endpoints: Sequence[str] = (),
                     served_model: str = "", command: str = "") -> tuple[Result, Path]:
    """`evaluate`, also returning the path of the result file written."""
    from harness.pipeline import EvalConfig
    from harness.pipeline import evaluate as run
    from harness.task.cascade import parse_cascade
    from harness.task.submission import Submission

    task_name, ovr = _task_arg(task, overrides)
    sub = submission if isinstance(submission, (Mapping, Submission)) else Path(submission)
    cfg = EvalConfig(task=task_name, submission=sub, backend=backend, device=device, results_dir=Path(results_dir),
                     overrides=ovr, endpoints=list(endpoints), served_model=served_model,
                     cascade=parse_cascade(cascade) if cascade is not None else None,
                     command=command or "harness.evaluate (Python API)")
    return run(cfg)


def load_result(path: str | os.PathLike) -> Result:
    """A result file, checked against the result schema (a damaged one is one `DamagedResult` line)."""
    from harness.result import load_result as load

    return load(path)


@dataclass
class Leaderboard:
    """A task's ranked rows (`harness leaderboard`) and the result files that could not be ranked, with why."""

    task_id: str
    task_hash: str
    rows: list[Row]
    rejected: list[Rejected] = field(default_factory=list)

    def render(self, fmt: str = "md") -> str:
        """The table as `md`, `csv` or `html` text (the leaderboard files' format)."""
        from harness.report.leaderboard import render

        return render(self.rows, fmt)

    def to_json(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per row (`harness leaderboard --format json`)."""
        from harness.report.leaderboard import to_json

        return to_json(self.rows)


def leaderboard(task: str | os.PathLike | TaskSpec, results_dir: str | os.PathLike = "results", *,
                overrides: Sequence[str] = ()) -> Leaderboard:
    """The task's leaderboard from the results under `results_dir`: the newest result per submission and
    simulator, ranked by the task's metric with paired CIs (ties marked), rows from another environment marked."""
    from harness.task.spec import load_task

    task_name, ovr = _task_arg(task, overrides)
    spec = load_task(task_name, ovr)
    rows, rejected = leaderboard_rows(Path(results_dir), spec.id, [spec])
    return Leaderboard(spec.id, spec.hash, rows, rejected)


def leaderboard_rows(results: Path, task_id: str | None, known: Sequence[TaskSpec] = ()
                     ) -> tuple[list[Row], list[Rejected]]:
    """Ranked rows of one task (or of all, `task_id` None) and the rejected files. `known`: task specs given by
    folder (not registered) or with overrides; they win over the registered spec of the same id."""
    from harness.report.leaderboard import collect_results
    from harness.task.spec import list_tasks, load_task

    by_id = {s.id: s for s in [*list_tasks(), *known]}
    if task_id and task_id not in by_id:
        by_id[task_id] = load_task(task_id)
    return collect_results(results, task_id, task_hashes={i: s.hash for i, s in by_id.items()},
                           fixed_cascade={i for i, s in by_id.items() if s.simulator.cascade})


def _task_arg(task: str | os.PathLike | TaskSpec, overrides: Sequence[str]) -> tuple[str, list[str]]:
    """What `load_task` takes: a spec given as an object is named by its task.toml, its overrides kept."""
    from harness.task.spec import TaskSpec

    if isinstance(task, TaskSpec):
        return str(task.toml_path), [*task.overrides, *overrides]
    return os.fspath(task), list(overrides)
