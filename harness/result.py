"""The result file: every number of one submission × task × simulator run (docs/protocol.md §6, §7).

Its schema is the dataclasses below. `harness/result.schema.json` is generated from them
(`python -m harness.result --schema`) and a test keeps the committed copy equal to the generated one.
An `Interval` is a point value with its 95% CI.

`methods` names how each number was computed (bootstrap method, draws and seed; Fieller for recovery;
numpy's quantile estimator; the detection threshold rule). It and `warnings` are optional so that results
written before they existed still load; `harness verify-result` says which numbers such a file cannot
support. The side file's arrays are listed in docs/protocol.md §7.

JSON has no NaN: non-finite floats (NaN, ±inf) are written as ``null`` and read back as NaN wherever the
schema says `float`. A field typed `X | None` (``ce_means.zero_output``, a latent-zero condition's
``recovery`` / ``diff_vs_latent_zero`` / ``calibration``) keeps ``null`` as "absent".

Every reader takes the sections as typed records (`r.headline.recovery.lo`); only `harness/report/verify.py`
reads the raw JSON, on purpose, to check a file independently of this code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from harness.errors import HarnessError
from harness.io import atomic_write_text
from harness.names import RankMetric, allowed, choice_text, field_types, is_literal

SCHEMA = "harness-result/1"
SCHEMA_FILE = Path(__file__).with_name("result.schema.json")


class Record:
    """A section of a result file: a dataclass written to JSON by its field names (`to_dict`)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _dump(getattr(self, f.name)) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if not (f.metadata.get("omit_empty") and not getattr(self, f.name))}


@dataclass
class Interval(Record):
    value: float
    lo: float
    hi: float
    note: str = field(default="", metadata={"omit_empty": True})   # why a value or its interval is NaN


@dataclass
class TaskRef(Record):
    id: str
    hash: str


@dataclass
class SubmissionInfo(Record):
    method: str
    description: str
    sha256: str
    path: str
    n_explanations: int
    coverage: float


@dataclass
class SimulatorInfo(Record):
    model_key: str
    prompt_version: str
    backend: str


@dataclass
class Provenance(Record):
    harness_version: str = ""
    date: str = ""
    seed: int = 0
    command: str = ""
    python: str = ""
    torch: str = ""
    transformers: str = ""
    platform: str = ""
    device: str = ""
    overrides: list[str] = field(default_factory=list)
    selection_scores: str = ""        # where the top-scoring subsets' scores came from
    wall_seconds: float = 0.0
    n_predictions: int = 0
    n_computed: int = 0
    n_cached: int = 0
    answer_mass_mean: float = math.nan
    prediction_source: str = ""       # computed | store | mixed
    # How the simulator engine was picked: `--backend auto`'s measured choice (harness/simulate/choice.py), or
    # "asked for" when the command named one. Empty in results written before it existed.
    engine_choice: str = ""
    # The environment (harness/environment.py); empty or 0 in results written before these existed.
    lock_sha256: str = ""             # the checkout's requirements.lock
    packages_sha256: str = ""         # the installed distributions' name==version lines (pip freeze, no paths)
    cpu: str = ""                     # CPU model name
    kernel: str = ""                  # kernel path: cpu:<torch capability>+<bf16/AMX flags> | cuda:<GPU> sm_XY
    threads: int = 0                  # torch intra-op threads
    # The installed distributions' name==version lines (what packages_sha256 digests): a leaderboard can then say
    # which package differs between two rows, not only that one does. Empty in results written before it.
    packages: list[str] = field(default_factory=list)


@dataclass
class Headline(Record):
    calibration: str
    recovery: Interval
    delta_ce_median: Interval
    delta_ce_mean: Interval
    latent_zero_delta_ce_median: Interval
    sim_minus_zero_mean: Interval
    sensitivity: float
    specificity: float
    detection_auroc: float
    detection_auroc_ci: Interval | None = None
    rank_by: RankMetric = "sim_minus_zero"
    detection_balanced_accuracy: float = math.nan
    recovery_denominator: Interval | None = None
    coder_delta_ce_median: Interval | None = None
    zero_output_delta_ce_median: Interval | None = None


@dataclass
class CeMeans(Record):
    clean: float
    coder: float
    zero_output: float | None       # None for SAEs: there is no output to zero
    latent_zero: float
    simulated: float


@dataclass
class ConditionRow(Record):
    name: str                       # latent_zero | simulated
    calibration: str | None         # None for latent_zero
    selection: str                  # all | top-scoring | random
    fraction: float
    n_latents: int
    ce_mean: float
    delta_ce_mean: Interval
    delta_ce_median: Interval
    recovery: Interval | None
    diff_vs_latent_zero: Interval | None

    @property
    def key(self) -> str:
        """The condition's key as `score.conditions.Condition.key` spells it (and the side file's `ce_<key>`
        arrays): latent_zero__all, simulated__quantile__random@0.1. Rows are found by it, never by matching
        their fields one by one."""
        subset = "all" if self.selection == "all" else f"{self.selection}@{self.fraction:g}"
        return "__".join([self.name, *([self.calibration] if self.calibration else []), subset])


def condition_row(rows: Sequence[ConditionRow], key: str) -> ConditionRow:
    """The row of condition `key` (e.g. `simulated("quantile", ALL).key`); a result without it is damaged."""
    found = next((r for r in rows if r.key == key), None)
    if found is None:
        raise HarnessError(f"the result has no condition {key} — the file is damaged; re-run `harness eval`")
    return found


@dataclass
class PerLatent(Record):
    latent: list[int]
    auroc: list[float]
    balanced_accuracy: list[float]
    sensitivity: list[float]
    specificity: list[float]
    score: list[float]
    detection_threshold: list[float] = field(default_factory=list)
    fire_rate: list[float] = field(default_factory=list)


@dataclass
class DetectionBin(Record):
    lo: float
    hi: float
    n: int
    sensitivity: float
    specificity: float


@dataclass
class SideFile(Record):
    path: str
    sha256: str


@dataclass
class SideFiles(Record):
    per_context: SideFile


@dataclass
class PredictionWarning(Record):
    kind: str
    latents: list[int]
    message: str


@dataclass
class BootstrapMethod(Record):
    method: str                       # percentile
    draws: int
    seed: int
    generator: str
    resampled: str


@dataclass
class IntervalMethods(Record):
    level: float
    bootstrap: BootstrapMethod
    recovery: str


@dataclass
class QuantileEstimator(Record):
    numpy_method: str
    exact: bool
    table: str


@dataclass
class DetectionThresholdMethod(Record):
    rule: str                         # fire-rate | fixed
    description: str


@dataclass
class Methods(Record):
    """How every number was computed (harness/report/write.py `method_notes`)."""

    intervals: IntervalMethods
    quantile_estimator: QuantileEstimator
    ecdf: str
    detection_threshold: DetectionThresholdMethod


@dataclass
class CascadeSettingsInfo(Record):
    top: int
    sample: float
    seed: int
    ranker: str
    calibration: str


@dataclass
class CascadeError(Record):
    """What the cascade's random sample says about pairs it did not simulate (harness/simulate/cascade.py)."""

    n_unselected: int
    n_sampled: int
    n_sampled_matter: float
    n_not_simulated: int
    matter_rate: Interval             # Clopper-Pearson
    missed: Interval                  # pairs not simulated whose exhaustive calibrated value would be > 0
    level: float
    criterion: str


@dataclass
class CascadeSummary(Record):
    settings: CascadeSettingsInfo
    scope: str
    fill_score: float
    calibration: str
    n_pairs: int
    n_selected: int
    n_sampled: int
    n_simulated: int
    n_detection: int
    n_llm_predictions: int
    exhaustive_predictions: int
    saving: float
    error: dict[str, CascadeError]    # all | calibration | test


@dataclass
class Result(Record):
    task: TaskRef
    submission: SubmissionInfo
    simulator: SimulatorInfo
    provenance: Provenance
    headline: Headline
    ce_means: CeMeans
    conditions: list[ConditionRow]
    per_latent: PerLatent
    sens_spec_by_detection_bin: list[DetectionBin]
    side_files: SideFiles
    figures: list[str] = field(default_factory=list)
    methods: Methods | None = None    # None only in results written before it existed
    warnings: list[PredictionWarning] = field(default_factory=list)
    # Only in cascade runs (harness/simulate/cascade.py `summary`): settings, prediction counts, error estimate.
    cascade: CascadeSummary | None = field(default=None, metadata={"omit_empty": True})
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        # schema first so a human opening the file sees what it is
        return {"schema": d.pop("schema"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "result") -> Result:
        return _load(cls, d, where)

    def to_json(self, path: str | os.PathLike) -> Path:
        return _write_json(self.to_dict(), path)


def _write_json(d: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically: the old file stays intact if anything fails before the final rename."""
    # Serialise before touching the disk, so an unserialisable value cannot cost the old file.
    text = json.dumps(to_jsonable(d), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write_text(Path(path), text)


# ---------------------------------------------------------------- the noisy-oracle report (harness/oracle.py)

ORACLE_FILE = "oracle.json"
ORACLE_FIGURE = "oracle.png"
ORACLE_SCHEMA = "harness-oracle/1"


@dataclass
class OracleRow(Record):
    form: str                        # graded | binary
    target_auroc: float              # a
    realised_auroc: Interval         # macro detection AUROC on the detection split, CI over latents
    sigma_median: float              # median over latents of the noise scale σ_j (graded: activation units)
    recovery: Interval               # Fieller
    sim_minus_zero_mean: Interval    # mean CE(simulated) − CE(latent_zero), nats, paired bootstrap
    sensitivity: Interval            # macro, bootstrap over test contexts
    specificity: Interval
    active_share: float              # share of (test context, latent) pairs non-zero after calibration + TopK


@dataclass
class OracleDiagnostic(Record):
    """The graded a = 1 oracle under the other calibrations: where information is lost on the CE path."""

    name: str
    calibration: str                 # none: raw true activations patched (must recover exactly what coder does)
    recovery: Interval
    sim_minus_zero_mean: Interval
    note: str = ""


@dataclass
class OracleProvenance(Record):
    harness_version: str
    date: str
    command: str
    seed: int
    levels: list[float]
    bootstrap_draws: int
    bootstrap_seed: int
    device: str
    wall_seconds: float
    noise_model: str


@dataclass
class OracleReport(Record):
    schema: str
    task: TaskRef
    provenance: OracleProvenance
    n_latents: int
    n_calibration: int
    n_test: int
    n_detection_positive: int        # detection positives over all latents (each's true activation read)
    # Latents that never fire on the calibration split: the quantile map can send none of their test predictions
    # above the zero mass (a test value above every calibration value is read as the maximum, here 0).
    n_latents_unfired_in_calibration: int
    recovery_denominator: Interval   # CE(latent_zero) − CE(coder), the nats there are to recover
    rows: list[OracleRow]
    diagnostics: list[OracleDiagnostic] = field(default_factory=list)
    figure: str = ""

    def to_json(self, path: str | os.PathLike) -> Path:
        return _write_json(self.to_dict(), path)


def load_oracle(path: str | Path) -> OracleReport:
    """An oracle report written by `harness oracle`; one clear line if it is not one."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HarnessError(f"{p}: not a readable oracle report ({e}) — rerun `harness oracle`") from None
    if not isinstance(d, dict) or d.get("schema") != ORACLE_SCHEMA:
        raise HarnessError(f"{p}: not an oracle report (schema {ORACLE_SCHEMA!r} expected) — rerun `harness oracle`")
    return _load(OracleReport, d, str(p))


# ---------------------------------------------------------------- (de)serialisation driven by the types

def _dump(x: Any) -> Any:
    if isinstance(x, Record):
        return x.to_dict()
    if isinstance(x, list):
        return [_dump(v) for v in x]
    if isinstance(x, dict):
        return {k: _dump(v) for k, v in x.items()}
    return x


_hints = field_types


def _is_optional(tp: Any) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _convert(tp: Any, v: Any, where: str) -> Any:
    optional, inner = _is_optional(tp)
    if v is None:
        if optional:
            return None
        if inner is float:
            return math.nan
        raise HarnessError(f"{where} is null where the schema needs a value — the file is damaged; re-run `harness eval`")
    if dataclasses.is_dataclass(inner):
        if not isinstance(v, dict):
            raise HarnessError(f"{where} is not an object — the file is damaged; re-run `harness eval`")
        return _load(inner, v, where)
    origin = typing.get_origin(inner)
    if origin is list:
        if not isinstance(v, list):
            raise HarnessError(f"{where} is not a list — the file is damaged; re-run `harness eval`")
        (item,) = typing.get_args(inner)
        return [_convert(item, x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise HarnessError(f"{where} is not an object — the file is damaged; re-run `harness eval`")
        _, item = typing.get_args(inner)
        return {k: _convert(item, x, f"{where}.{k}") for k, x in v.items()}
    if inner is Any:
        return v
    if is_literal(inner):
        if v not in allowed(inner):
            raise HarnessError(f"{where} holds {v!r:.40} where the schema needs {choice_text(allowed(inner))} — "
                               "the file is damaged; re-run `harness eval`")
        return v
    if inner is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise HarnessError(f"{where} holds {type(v).__name__} where the schema needs a number — the file "
                               "is damaged; re-run `harness eval`")
        return float(v)
    if inner is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise HarnessError(f"{where} holds {type(v).__name__} where the schema needs an integer — the "
                               "file is damaged; re-run `harness eval`")
        return v
    if inner in (str, bool) and not isinstance(v, inner):
        raise HarnessError(f"{where} holds {type(v).__name__} where the schema needs {inner.__name__} — the "
                           "file is damaged; re-run `harness eval`")
    return v


def _load(cls: Any, d: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        path = f"{where}.{f.name}" if where != "result" else f.name
        if f.name in d:
            kwargs[f.name] = _convert(hints[f.name], d[f.name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise HarnessError(f'{where}: "{path}" is missing — the file is damaged; re-run `harness eval`')
    return cls(**kwargs)


def to_jsonable(obj: Any) -> Any:
    """numpy → Python, non-finite floats → None (JSON has no NaN)."""
    if isinstance(obj, Record):
        return to_jsonable(obj.to_dict())
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


# ---------------------------------------------------------------- JSON Schema, generated from the types

def _schema_of(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    optional, inner = _is_optional(tp)
    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
        name = inner.__name__
        if name not in defs:
            defs[name] = {}
            hints = _hints(inner)
            props = {f.name: _schema_of(hints[f.name], defs) for f in dataclasses.fields(inner)}
            required = [f.name for f in dataclasses.fields(inner)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            doc = (inner.__doc__ or "").strip()
            defs[name] = {"type": "object", "properties": props, "required": required,
                          **({"description": doc} if doc and not doc.startswith(f"{name}(") else {})}
        s: dict[str, Any] = {"$ref": f"#/$defs/{name}"}
    elif typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        s = {"type": "array", "items": _schema_of(item, defs)}
    elif typing.get_origin(inner) is dict:
        s = {"type": "object", "additionalProperties": _schema_of(typing.get_args(inner)[1], defs)}
    elif inner is Any:
        s = {"type": "object"}
    elif is_literal(inner):
        s = {"type": "string", "enum": list(allowed(inner))}
    elif inner is float:
        s = {"type": ["number", "null"]}      # null = NaN
    elif inner is int:
        s = {"type": "integer"}
    elif inner is bool:
        s = {"type": "boolean"}
    else:
        s = {"type": "string"}
    if optional and "null" not in s.get("type", []):
        s = {"anyOf": [s, {"type": "null"}]}
    return s


def json_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    root = _schema_of(Result, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA,
            "title": "harness result file", **root, "$defs": dict(sorted(defs.items()))}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=1) + "\n"


class DamagedResult(HarnessError):
    """A result file cut short or edited out of shape: every reader of a results folder (eval's leaderboard step
    too) names it in one line and goes on. A file of another schema or not a result at all is not damage."""


def load_result(path: str | os.PathLike) -> Result:
    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise HarnessError(f"{where}: result file not found — check the path")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        # A cut in the middle of a multi-byte character reads as bad UTF-8: damage as likely as a foreign file.
        raise DamagedResult(f"{where}: not UTF-8 text — this is not a harness result file, or it was cut short") \
            from None
    except json.JSONDecodeError as e:
        raise DamagedResult(
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
    try:
        return Result.from_dict(d)
    except HarnessError as e:
        raise DamagedResult(f"{where}: {e}") from None


# ---------------------------------------------------------------- the per-context side file

class SideArray(str):
    """One array of the per-context side file: its name (usable wherever the name is: `side[SIDE.true_test]`), its
    dtype kind (numpy's `dtype.kind`), its axes and what it holds. A family (`SIDE.ce`, `SIDE.sim_values`...) is a
    name prefix; calling it with the member's parts gives one array's name, e.g. `SIDE.sim_values("quantile")`."""

    kind: str
    axes: tuple[str, ...]
    doc: str
    family: bool

    def __new__(cls, name: str, kind: str, axes: tuple[str, ...], doc: str, family: bool = False) -> SideArray:
        obj = super().__new__(cls, name)
        obj.kind, obj.axes, obj.doc, obj.family = kind, axes, doc, family
        return obj

    def __call__(self, *parts: str) -> str:
        return str(self) + "__".join(parts)


class SIDE:
    """Every array of the side file, the one place their names are spelled: `report/write.py` writes them and
    checks each against this description (`side_layout_errors`); every reader indexes with these names. Axes:
    test (test contexts), calibration (calibration contexts), latent (scored latents, result order), T (window
    tokens), k (detection examples), nz (stored activation-table values)."""

    # identity: copies of the result's own fields, so that `verify-result` can tell a side file from another's
    record = SideArray("record", "U", (), "JSON of the result's task, submission, simulator, provenance, warnings")
    latents = SideArray("latents", "i", ("latent",), "the scored latents")
    rewritten = SideArray("rewritten", "i", ("rewritten",), "every latent the task rewrites")
    # the task's test split
    test_windows = SideArray("test_windows", "i", ("test", "T"), "token windows; the last position is scored")
    test_targets = SideArray("test_targets", "i", ("test",), "the token after each window")
    true_test = SideArray("true_test", "f", ("test", "latent"), "true activation at the scored position")
    # the simulator's predictions
    pred_calibration = SideArray("pred_calibration", "f", ("calibration", "latent"), "raw predictions")
    pred_test = SideArray("pred_test", "f", ("test", "latent"), "raw predictions")
    det_pred_pos = SideArray("det_pred_pos", "f", ("latent", "k"), "predictions on detection positives (NaN pad)")
    det_pred_neg = SideArray("det_pred_neg", "f", ("latent", "k"), "predictions on detection negatives (NaN pad)")
    calibration_weights = SideArray("calibration_weights", "f", ("calibration", "latent"),
                                    "a cascade's weight of each calibration prediction (absent: exhaustive)")
    # detection and selection
    detection_threshold = SideArray("detection_threshold", "f", ("latent",), "prediction at or above: firing")
    fire_rate = SideArray("fire_rate", "f", ("latent",), "firing rate on the activation sample")
    selection_scores = SideArray("selection_scores", "f", ("latent",), "what top-scoring partial rewrites rank by")
    # calibration and patching
    sim_values = SideArray("sim_values__", "f", ("test", "latent"), "calibrated values, per calibration mode",
                           family=True)
    active_sim = SideArray("active_sim__", "b", ("test", "latent"), "firing after TopK, per calibration mode",
                           family=True)
    active_true = SideArray("active_true", "b", ("test", "latent"), "firing in the true code")
    subset = SideArray("subset__", "i", ("subset",), "latents of a partial rewrite, per selection@fraction",
                       family=True)
    ce = SideArray("ce_", "f", ("test",), "last-position CE of a baseline (clean, coder, zero_output) or a "
                   "condition (its key, e.g. simulated__quantile__all)", family=True)
    # the activation table's excerpt the quantile map needs
    table_n_tokens = SideArray("table_n_tokens", "i", (), "tokens in the activation sample")
    table_method = SideArray("table_method", "U", (), "numpy quantile method")
    table_nz_count = SideArray("table_nz_count", "i", ("latent",), "non-zero activations per latent")
    table_nz_stored = SideArray("table_nz_stored", "i", ("latent",), "how many of them are stored here")
    table_nz_ranks = SideArray("table_nz_ranks", "i", ("nz",), "their ranks")
    table_nz_values = SideArray("table_nz_values", "f", ("nz",), "their values")

    # The headline's pair of conditions (quantile calibration, every latent rewritten), read by every ranking.
    ce_simulated_all = "ce_simulated__quantile__all"
    ce_latent_zero_all = "ce_latent_zero__all"

    @classmethod
    def arrays(cls) -> list[SideArray]:
        return [v for v in vars(cls).values() if isinstance(v, SideArray)]

    @classmethod
    def of(cls, name: str) -> SideArray | None:
        """The description an array name falls under (a family member's is its family's)."""
        exact = [a for a in cls.arrays() if not a.family and a == name]
        return exact[0] if exact else next((a for a in cls.arrays() if a.family and name.startswith(a)), None)


def side_layout_errors(arrays: dict[str, np.ndarray]) -> list[str]:
    """What in `arrays` breaks the side file's description: an undescribed name, a wrong dtype kind or number of
    axes, or an axis whose length differs between arrays (test, calibration, latent)."""
    errors, lengths = [], {}
    for name, a in arrays.items():
        d = SIDE.of(name)
        if d is None:
            errors.append(f"{name}: not in the side file's description (harness.result.SIDE)")
            continue
        a = np.asarray(a)
        if a.dtype.kind != d.kind or a.ndim != len(d.axes):
            errors.append(f"{name}: {a.dtype} with {a.ndim} axes, described as kind {d.kind!r} with axes {d.axes}")
            continue
        for axis, n in zip(d.axes, a.shape, strict=True):
            if axis in ("test", "calibration", "latent"):
                if lengths.setdefault(axis, (n, name))[0] != n:
                    errors.append(f"{name}: {axis} axis {n} long, {lengths[axis][1]}'s is {lengths[axis][0]}")
    return errors


class DamagedSideFile(HarnessError):
    """A side file that cannot be read whole: truncated, corrupted, or lacking an array a reader needs."""


def read_side_file(path: str | os.PathLike, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays `keys` (every array when None) of a per-context side file, each read whole.

    Reading an array checks its zip CRC-32, so a truncated or corrupted file is caught here as one
    `DamagedSideFile` line naming it, never a zipfile/zlib traceback in the middle of a report.
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            names = list(z.files) if keys is None else list(keys)
            missing = [k for k in names if k not in z.files]
            if missing:
                raise KeyError(f"no {', '.join(repr(k) for k in missing[:3])} array")
            return {k: z[k] for k in names}
    except FileNotFoundError:
        raise DamagedSideFile(f"{p}: side file not found — it must sit next to its result; re-run `harness eval`") \
            from None
    except Exception as e:  # any unreadable side file is one line; KeyboardInterrupt is not an Exception
        from harness.io import one_line

        why = one_line(str(e).strip("'\"") or type(e).__name__)
        raise DamagedSideFile(f"{p}: side file is damaged ({why}) — re-run `harness eval` for this submission") \
            from None


if __name__ == "__main__":
    if sys.argv[1:] == ["--schema"]:
        SCHEMA_FILE.write_text(schema_text())
        print(f"wrote {SCHEMA_FILE}")
    else:
        print("usage: python -m harness.result --schema", file=sys.stderr)
        sys.exit(2)
