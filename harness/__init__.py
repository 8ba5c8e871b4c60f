"""harness: the reference benchmark for natural-language explanations of sparse-coder latents.

The Python API (`harness.api`): `evaluate(task, submission)` → `Result`, `load_result(path)`,
`leaderboard(task)`, `Submission.build(...)`, `load_task(...)`. Names are imported on first use, so that
`import harness` stays cheap (no torch) for the command line's quick verbs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "evaluate": "harness.api", "evaluate_to_file": "harness.api", "load_result": "harness.api",
    "leaderboard": "harness.api", "Leaderboard": "harness.api",
    "Submission": "harness.task.submission", "save_submission": "harness.task.submission",
    "Result": "harness.result", "HarnessError": "harness.errors", "load_task": "harness.task.spec",
    "TaskSpec": "harness.task.spec",
}
__all__ = ["HarnessError", "Leaderboard", "Result", "Submission", "TaskSpec", "evaluate", "evaluate_to_file",
           "leaderboard", "load_result", "load_task", "save_submission"]

if TYPE_CHECKING:   # for pyright and editors; at run time __getattr__ imports on first use
    from harness.api import Leaderboard as Leaderboard
    from harness.api import evaluate as evaluate
    from harness.api import evaluate_to_file as evaluate_to_file
    from harness.api import leaderboard as leaderboard
    from harness.api import load_result as load_result
    from harness.errors import HarnessError as HarnessError
    from harness.result import Result as Result
    from harness.task.spec import TaskSpec as TaskSpec
    from harness.task.spec import load_task as load_task
    from harness.task.submission import Submission as Submission
    from harness.task.submission import save_submission as save_submission


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
