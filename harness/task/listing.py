"""`harness tasks`: one summary row per registered task, for the terminal table and for `--format json`."""

from __future__ import annotations

from typing import Any

from harness.task.spec import TaskSpec
from harness.terminal import Column

COLUMNS = (
    Column("id", key=True),
    Column("hash", key=True),
    Column("subject"),
    Column("coder"),
    Column("T", numeric=True),
    Column("cal/test", numeric=True),
    Column("rewritten"),
    Column("simulator"),
)


def _model_name(m: dict) -> str:
    return str(m.get("id") or m.get("file") or m.get("path") or m.get("repo") or "?")


def task_json(s: TaskSpec) -> dict[str, Any]:
    """Every column of the table, whole: the full hash, numbers as numbers, the latent rule in its own field."""
    lat = s.latents
    sim = (s.simulator_ref().describe() if s.simulator.model.get("source") == "gguf-parts"
           else _model_name(s.simulator.model))
    return {
        "id": s.id,
        "hash": s.hash,
        "subject": _model_name(s.subject),
        "coder_kind": s.coder.kind,
        "hookpoint": s.coder.hookpoint,
        "T": s.contexts.T,
        "calibration": s.contexts.calibration,
        "test": s.contexts.test,
        # "all", a number drawn by `latent_rule`, or the listed latent indices
        "rewritten": lat.rewritten if isinstance(lat.rewritten, str) and lat.rewritten != "rule" else (
            lat.count if lat.rewritten == "rule" else list(lat.rewritten)),
        "latent_rule": lat.rule if lat.rewritten == "rule" else "",
        "simulator": sim,
        "prompt_version": s.simulator.prompt_version,
        "folder": str(s.folder),
    }


def task_cells(t: dict[str, Any]) -> list[str]:
    """The table row of `task_json`'s object (hash shortened to 12 hex digits: what `eval` prints)."""
    rw = t["rewritten"]
    rewritten = (rw if isinstance(rw, str) else f"{rw} ({t['latent_rule']})" if t["latent_rule"]
                 else f"{len(rw)} listed")
    return [t["id"], t["hash"][:12], t["subject"], f"{t['coder_kind']} @ {t['hookpoint']}", str(t["T"]),
            f"{t['calibration']}/{t['test']}", rewritten, t["simulator"]]
