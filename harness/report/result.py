"""Result files: every number of one submission × task × simulator run (docs/protocol.md §6, §7).

Shape (``{...}`` below is an Estimate ``{"value", "lo", "hi"}``, a point value and its 95% CI)::

    {"schema": "harness-result/1",
     "task": {"id", "hash"},
     "submission": {"method", "description", "sha256", "path", "n_explanations", "coverage"},
     "simulator": {"model_key", "prompt_version", "backend"},
     "provenance": {"harness_version", "date", "seed", "command", "python", "torch", "transformers", "platform"},
     "headline": {"calibration", "recovery": {...}, "delta_ce_median": {...}, "delta_ce_mean": {...},
                  "latent_zero_delta_ce_median": {...}, "sim_minus_zero_mean": {...},
                  "sensitivity", "specificity", "detection_auroc"},
     "ce_means": {"clean", "coder", "zero_output" (null for SAEs), "latent_zero", "simulated"},
     "conditions": [{"name", "calibration", "selection", "fraction", "n_latents", "ce_mean",
                     "delta_ce_mean": {...}, "delta_ce_median": {...},
                     "recovery": {...} | null, "diff_vs_latent_zero": {...} | null}],
     "per_latent": {"latent": [int], "auroc", "balanced_accuracy", "sensitivity", "specificity", "score": [float]},
     "sens_spec_by_detection_bin": [{"lo", "hi", "n", "sensitivity", "specificity"}],
     "side_files": {"per_context": {"path", "sha256"}},
     "figures": [str],
     "methods": {"intervals", "quantile_estimator", "ecdf", "detection_threshold"},   (optional)
     "warnings": [{"kind", "latents", "message"}]}                                   (optional)

`methods` names how each number was computed (bootstrap method, draws and seed; Fieller for recovery;
numpy's quantile estimator; the detection threshold rule). It and `warnings` are optional so that results
written before they existed still load; `harness verify-result` says which numbers such a file cannot
support. The side file's arrays are listed in docs/protocol.md §7.

JSON has no NaN: non-finite floats (NaN, ±inf) are written as ``null`` and read back as NaN
wherever the shape above expects a float. A ``null`` that means "absent" (``ce_means.zero_output``,
a condition's ``recovery`` / ``diff_vs_latent_zero``, a condition's ``calibration``) stays ``None``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import secrets
import sys
from dataclasses import asdict, dataclass, field
from hashlib import sha256
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

SCHEMA = "harness-result/1"

_SECTIONS_DICT = ("task", "submission", "simulator", "provenance", "headline", "ce_means", "per_latent", "side_files")
_SECTIONS_LIST = ("conditions", "sens_spec_by_detection_bin", "figures")
_OPTIONAL_SECTIONS = ("methods", "warnings")

_ESTIMATE_KEYS = ("value", "lo", "hi")
_HEADLINE_ESTIMATES = (
    "recovery",
    "delta_ce_median",
    "delta_ce_mean",
    "latent_zero_delta_ce_median",
    "sim_minus_zero_mean",
    "recovery_denominator",
)
_HEADLINE_FLOATS = ("sensitivity", "specificity", "detection_auroc", "detection_balanced_accuracy")
_CONDITION_ESTIMATES = ("delta_ce_mean", "delta_ce_median", "recovery", "diff_vs_latent_zero")
_PER_LATENT_FLOAT_LISTS = ("auroc", "balanced_accuracy", "sensitivity", "specificity", "score",
                           "detection_threshold", "fire_rate")


def estimate(value: float, lo: float, hi: float) -> dict[str, float]:
    return {"value": float(value), "lo": float(lo), "hi": float(hi)}


@dataclass
class Result:
    """Loose on purpose: sections are plain dicts/lists so the evaluator can fill them as it goes."""

    task: dict[str, Any] = field(default_factory=dict)
    submission: dict[str, Any] = field(default_factory=dict)
    simulator: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)
    ce_means: dict[str, Any] = field(default_factory=dict)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    per_latent: dict[str, list] = field(default_factory=dict)
    sens_spec_by_detection_bin: list[dict[str, Any]] = field(default_factory=list)
    side_files: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    methods: dict[str, Any] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # schema first so a human opening the file sees what it is
        return {"schema": d.pop("schema"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Result":
        return cls(**{k: d[k] for k in (*_SECTIONS_DICT, *_SECTIONS_LIST, *_OPTIONAL_SECTIONS, "schema") if k in d})

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write atomically: the old file stays intact if anything fails before the final rename."""
        # Serialise before touching the disk, so an unserialisable value cannot cost the old file.
        text = json.dumps(to_jsonable(self.to_dict()), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        return atomic_write_text(Path(path), text)


def to_jsonable(obj: Any) -> Any:
    """numpy → Python, non-finite floats → None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a result file")


def atomic_write(path: Path, write) -> Path:
    """Call ``write(binary_file)`` on a temp file next to ``path``, then rename it over ``path``.

    A crash never leaves half a file. The temp file is created with mode 0666 for the kernel to apply
    the umask, as any tool's output gets (mkstemp would make it 0600, unreadable to a web server).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _f(x: Any) -> float:
    return math.nan if x is None else float(x)


def _restore_estimate(e: Any) -> Any:
    if isinstance(e, dict):
        return {**e, **{k: _f(e.get(k)) for k in _ESTIMATE_KEYS}}
    return e


def _restore_nans(d: dict[str, Any]) -> dict[str, Any]:
    h = d.get("headline", {})
    for k in _HEADLINE_ESTIMATES:
        if k in h:
            h[k] = _restore_estimate(h[k])
    for k in _HEADLINE_FLOATS:
        if k in h:
            h[k] = _f(h[k])
    ce = d.get("ce_means", {})
    for k in list(ce):
        if k != "zero_output":
            ce[k] = _f(ce[k])
    sub = d.get("submission", {})
    if "coverage" in sub:
        sub["coverage"] = _f(sub["coverage"])
    for c in d.get("conditions", []):
        for k in ("fraction", "ce_mean"):
            if k in c:
                c[k] = _f(c[k])
        for k in _CONDITION_ESTIMATES:
            if k in c:
                c[k] = _restore_estimate(c[k])
    pl = d.get("per_latent", {})
    for k in _PER_LATENT_FLOAT_LISTS:
        if k in pl and isinstance(pl[k], list):
            pl[k] = [_f(x) for x in pl[k]]
    for b in d.get("sens_spec_by_detection_bin", []):
        for k in ("lo", "hi", "sensitivity", "specificity"):
            if k in b:
                b[k] = _f(b[k])
    return d


def load_result(path: str | os.PathLike) -> Result:
    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"{where}: result file not found — check the path")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise HarnessError(f"{where}: not UTF-8 text — this is not a harness result file") from None
    except json.JSONDecodeError as e:
        raise HarnessError(
            f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg} — re-run `harness eval` to rewrite it"
        ) from None
    except RecursionError:
        raise HarnessError(f"{where}: JSON nested too deep — this is not a harness result file") from None
    if not isinstance(d, dict) or "schema" not in d:
        raise HarnessError(f'{where}: no "schema" key — this is not a harness result file')
    if d["schema"] != SCHEMA:
        raise HarnessError(
            f'{where}: schema is {d["schema"]!r}, this harness reads {SCHEMA!r} — re-run `harness eval` to rewrite it'
        )
    for k in _SECTIONS_DICT:
        if not isinstance(d.get(k), dict):
            raise HarnessError(f'{where}: "{k}" is missing or not an object — the file is damaged; re-run `harness eval`')
    for k in _SECTIONS_LIST:
        if not isinstance(d.get(k), list):
            raise HarnessError(f'{where}: "{k}" is missing or not a list — the file is damaged; re-run `harness eval`')
    for k in ("id", "hash"):
        if not isinstance(d["task"].get(k), str):
            raise HarnessError(f'{where}: task.{k} is missing — the file is damaged; re-run `harness eval`')
    try:
        d = _restore_nans(d)
    except (TypeError, ValueError, AttributeError) as e:
        raise HarnessError(f"{where}: a number field holds a non-number ({e}) — the file is damaged; re-run `harness eval`") from None
    return Result.from_dict(d)


def file_sha256(path: str | os.PathLike) -> str:
    h = sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dist_version(name: str) -> str:
    # importlib.metadata, not import: provenance must not pay for importing torch.
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def make_provenance(*, seed: int, command: str) -> dict[str, Any]:
    from harness import __version__

    return {
        "harness_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": int(seed),
        "command": command,
        "python": sys.version.split()[0],
        "torch": _dist_version("torch"),
        "transformers": _dist_version("transformers"),
        "platform": platform.platform(),
    }


def result_path(results_dir: str | os.PathLike, task_id: str, method: str, submission_sha256: str, model_key: str, prompt_version: str) -> Path:
    """A stable file name per (task, submission, simulator, prompt): re-running overwrites, never forks."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in method)[:40] or "submission"
    sim = sha256(f"{model_key}\n{prompt_version}".encode()).hexdigest()[:8]
    return Path(results_dir) / task_id / f"{safe}-{submission_sha256[:12]}-{sim}.json"
