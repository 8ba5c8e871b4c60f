"""Task specs (`tasks/<id>/task.toml`): loading, validation, content hash and the registry.

A task freezes everything that changes a number: subject model, coder, corpus, context length, split
sizes, seeds, rewritten latents, simulator and prompt version, scoring options, and the sha256 of every
pinned artifact. The hash covers all of it except free text, so results from different specs can never
be mixed on one leaderboard.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from harness.errors import HarnessError
from harness.names import (
    CoderKind,
    CoderSource,
    CorpusSource,
    DetectionRule,
    LatentRule,
    RankMetric,
    allowed,
    choice_text,
    field_types,
    is_literal,
)

KNOWN_SECTIONS = {"id", "description", "notes", "subject", "coder", "corpus", "contexts", "latents",
                  "simulator", "scoring", "artifacts"}
MODEL_KEYS = {"source", "id", "revision", "path", "package", "file", "dtype", "parts", "sha256", "version"}
RANK_METRICS = allowed(RankMetric)
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class CoderSpec:
    source: CoderSource
    hookpoint: str
    kind: CoderKind
    path: str = ""         # local folder (relative to the task folder) holding cfg.json + sae.safetensors
    repo: str = ""         # hub repo id
    revision: str = ""     # hub commit
    subfolder: str = ""    # folder inside the hub repo (sparsify: the hookpoint name)
    num_latents: int = 0   # declared shape (checked against cfg.json on load; lets `estimate` run offline)
    k: int = 0

    def __post_init__(self) -> None:
        _require(self, ("path",) if self.source == "local" else ("repo", "revision"))


@dataclass(frozen=True)
class CorpusSpec:
    source: CorpusSource
    path: str = ""                 # local-tokens: .npz with `tokens`; local-text: .txt/.jsonl file
    dataset: str = ""              # hub dataset id
    revision: str = ""
    config: str = ""
    split: str = "train"
    text_field: str = "text"
    data_files: str = ""           # a file inside the dataset repo, to avoid fetching all of it
    max_documents: int = 0         # documents read from the start of the split (0: as many as needed)
    offset: int = 0                # local-tokens: skip this many tokens (e.g. the part the coder was trained on)

    def __post_init__(self) -> None:
        _require(self, ("dataset", "revision") if self.source == "hub" else ("path",))


@dataclass(frozen=True)
class ContextSpec:
    T: int                          # window length; the scored position is the window's last
    seed: int
    activation_sample_tokens: int   # tokens in the activation_sample split (coder only)
    calibration: int
    test: int
    detection_positive: int
    detection_negative: int
    detection_pool: int = 0         # windows searched for detection examples (0: auto)
    min_position: int = 0           # first position used for activation sample / detection (0: T // 2)

    def __post_init__(self) -> None:
        for key in ("T", "activation_sample_tokens", "calibration", "test", "detection_positive"):
            if getattr(self, key) < 1:
                raise ValueError(f"`{key}` must be a positive integer (got {getattr(self, key)})")
        for key in ("seed", "detection_negative"):
            if getattr(self, key) < 0:
                raise ValueError(f"`{key}` must be a positive integer (got {getattr(self, key)})")


@dataclass(frozen=True)
class LatentSpec:
    rewritten: str | tuple[int, ...]   # "all" or explicit latent indices
    count: int = 0                     # with a rule: how many latents to draw
    rule: LatentRule | typing.Literal[""] = ""   # with count: how they are drawn ("": no rule)
    seed: int = 0
    # With a rule: draw only among latents firing at least this often in the activation sample, so that
    # each drawn latent has positives among the test contexts (a rarer latent cannot move a small task's CE).
    min_fire_rate: float = 0.0


@dataclass(frozen=True)
class SimulatorSpec:
    model: dict
    prompt_version: str
    max_explanation_chars: int
    batch_size: int = 32
    # A cascade the task fixes (`harness.task.cascade.parse_cascade` syntax, e.g. "top=8,sample=0.02"),
    # so that every submission is simulated the same way and the leaderboard compares like with like.
    # Empty: exhaustive, unless `harness eval --cascade` asks otherwise.
    cascade: str = ""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer (got {self.batch_size})")
        if self.cascade:
            from harness.task.cascade import parse_cascade

            parse_cascade(self.cascade)   # a malformed setting fails at load, naming the task file


@dataclass(frozen=True)
class ScoringSpec:
    quantile_method: str = "inverted_cdf"
    n_quantiles: int = 1001
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    bootstrap: int = 10000   # measured: benchmarks/bootstrap_draws.py, docs/protocol.md §6
    seed: int = 0
    # Balanced accuracy of detection: "fire-rate" fits one threshold per latent on the calibration split
    # (metrics.detection_thresholds), on whatever scale the simulator answers; "fixed" compares against
    # `detection_threshold`, which only means something for one answer scale (docs/protocol.md, Metrics).
    detection_rule: DetectionRule = "fire-rate"
    detection_threshold: float = 1.0
    # What the leaderboard ranks by: "sim_minus_zero" (mean paired CE difference, the paper's quantity) or
    # "detection_auroc" (mean per-latent detection AUROC, bootstrap over latents), for tasks too small for CE to
    # order methods (the offline mini task: docs/findings.md).
    rank_by: RankMetric = "sim_minus_zero"

    def __post_init__(self) -> None:
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ValueError("`fractions` must be a list of numbers in (0, 1]")
        if self.bootstrap < 1000:
            raise ValueError("`bootstrap` must be at least 1000 draws (docs/protocol.md §6)")


@dataclass(frozen=True)
class TaskSpec:
    id: str
    description: str
    subject: dict
    coder: CoderSpec
    corpus: CorpusSpec
    contexts: ContextSpec
    latents: LatentSpec
    simulator: SimulatorSpec
    scoring: ScoringSpec
    artifacts: dict[str, str]
    folder: Path = field(compare=False)
    toml_path: Path = field(compare=False)
    overrides: tuple[str, ...] = field(default=(), compare=False)

    @property
    def hash(self) -> str:
        return task_hash(self)

    def subject_ref(self):
        from harness.model.load import ModelRef
        return ModelRef.from_dict(self.subject, f"{self.toml_path} [subject]", base_dir=self.folder)

    def simulator_ref(self):
        from harness.model.load import ModelRef
        return ModelRef.from_dict(self.simulator.model, f"{self.toml_path} [simulator]", base_dir=self.folder)

    def resolve(self, rel: str) -> Path:
        p = Path(os.path.expanduser(rel))
        return p if p.is_absolute() else self.folder / p

    def min_position(self) -> int:
        return self.contexts.min_position or self.contexts.T // 2


def _canonical(spec: TaskSpec) -> dict:
    d = asdict(spec)
    for k in ("folder", "toml_path", "overrides", "description"):
        d.pop(k, None)
    # Where a file lives is not what it is: the sha256s in [artifacts] pin content.
    for section in ("subject",):
        if d[section].get("source") != "local":
            d[section].pop("path", None)
    if d["simulator"]["model"].get("source") != "local":
        d["simulator"]["model"].pop("path", None)
    d["simulator"].pop("batch_size", None)  # speed only
    if not d["simulator"].get("cascade"):
        d["simulator"].pop("cascade", None)  # added later: specs without it keep their hash
    if d["scoring"].get("rank_by") == "sim_minus_zero":
        d["scoring"].pop("rank_by")  # added later: specs that keep the default keep their hash
    if not d["latents"].get("min_fire_rate"):
        d["latents"].pop("min_fire_rate", None)  # added later: specs without it keep their hash
    d["coder"].pop("path", None) if d["coder"]["source"] == "hub" else None
    if d["corpus"]["source"] == "hub":
        d["corpus"].pop("path", None)
    return d


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def task_hash(spec: TaskSpec) -> str:
    return _digest(_canonical(spec))


def _need(d: dict, key: str, typ, where: str):
    if key not in d:
        raise HarnessError(f"{where}: missing key `{key}`")
    v = d[key]
    if typ is int and isinstance(v, bool) or not isinstance(v, typ):
        raise HarnessError(f"{where}: `{key}` must be {typ.__name__ if isinstance(typ, type) else typ}, got {_show(v)}")
    return v


def _require(spec: Any, keys: tuple[str, ...]) -> None:
    """Cross-field rule of a spec section: the keys its `source` needs are given."""
    for key in keys:
        if not getattr(spec, key):
            raise ValueError(f"missing key `{key}`")


def _build(cls: Any, d: dict, where: str) -> Any:
    """The section's dataclass; its cross-field rules (`__post_init__`) fail as one line naming the file."""
    try:
        return cls(**d)
    except ValueError as e:
        raise HarnessError(f"{where}: {e}") from None


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:40] + "…"


def _table(raw: dict, name: str, where: str) -> dict:
    v = raw.get(name) or {}
    if not isinstance(v, dict):
        raise HarnessError(f"{where} [{name}]: must be a table, got {_show(v)}")
    return v


def _typed(d: dict, cls, where: str) -> None:
    """Each given key has its dataclass field's type (int: not bool and >= 0; float: finite; a Literal type: one
    of its values)."""
    hints = field_types(cls)
    for name in cls.__dataclass_fields__:
        if name not in d:
            continue
        tp, v = hints[name], d[name]
        if is_literal(tp):
            values = tuple(x for x in allowed(tp) if x)   # "" is a field's unset default, never written
            if v not in values:
                raise HarnessError(f"{where}: {name} must be {choice_text(values)} (got {_show(v)})")
            continue
        if tp is str:
            ok, want = isinstance(v, str), "a string"
        elif tp is int:
            ok, want = isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"
        elif tp is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            want = "a finite number"
        else:
            continue
        if not ok:
            raise HarnessError(f"{where}: `{name}` must be {want}, got {_show(v)}")


def _only(d: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise HarnessError(f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")


def _model_dict(d: Any, where: str) -> dict:
    if not isinstance(d, dict):
        raise HarnessError(f"{where}: must be a table")
    _only(d, MODEL_KEYS, where)
    src = _need(d, "source", str, where)
    required = {"hub": ("id", "revision"), "local": ("path",), "gguf-package": ("package", "file"),
                "gguf-parts": ("package", "file", "sha256")}
    if src not in required:
        raise HarnessError(f"{where}: source must be one of {', '.join(required)} (got {src!r})")
    for key in required[src]:
        _need(d, key, str, where)
    if src == "gguf-parts":
        _need(d, "parts", int, where)
    for key, v in d.items():
        if not isinstance(v, str) and key not in ("parts",):
            raise HarnessError(f"{where}: `{key}` must be a string, got {_show(v)}")
    return dict(d)


def apply_overrides(raw: dict, overrides: list[str], where: str) -> dict:
    """`section.key=value` edits of the parsed TOML, e.g. `subject.path=/models/pythia` (values parsed as TOML).

    `section.key=` (nothing after the `=`) removes the key: switching a model to another source must drop the
    keys the old source needed (e.g. a multi-part GGUF's `parts` and `sha256`).
    """
    for ov in overrides:
        if "=" not in ov or not ov.split("=", 1)[0].strip():
            raise HarnessError(f"override {ov!r}: write it as section.key=value, e.g. subject.path=/data/model")
        key, value = ov.split("=", 1)
        if not value.strip():
            *path, last = key.strip().split(".")
            node = raw
            for p in path:
                node = node.get(p) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(last, None)
            continue
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except (tomllib.TOMLDecodeError, RecursionError, KeyError):
            parsed = value
        parts = key.split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise HarnessError(f"override {ov!r}: {p} is not a section of {where}")
        node[parts[-1]] = parsed
    return raw


def parse_task(toml_path: Path, overrides: list[str] | None = None) -> TaskSpec:
    toml_path = Path(toml_path)
    where = str(toml_path)
    raw = apply_overrides(_read_toml(toml_path), list(overrides or []), where)
    _only(raw, KNOWN_SECTIONS, where)
    tid = _need(raw, "id", str, where)
    if not _TASK_ID.fullmatch(tid):
        # The id names folders (results/<id>/, the cache): no separators, no "..", nothing hidden.
        raise HarnessError(f"{where}: id {_show(tid)} must be letters, digits, '.', '_' or '-' (at most 100), "
                           "starting with a letter or digit")
    arts = _table(raw, "artifacts", where)
    if not all(isinstance(v, str) and len(v) == 64 for v in arts.values()):
        raise HarnessError(f"{where} [artifacts]: each entry must map a path to a 64-hex sha256")
    return TaskSpec(
        id=tid,
        description=str(raw.get("description", "")),
        subject=_model_dict(raw.get("subject"), f"{where} [subject]"),
        coder=_coder(_table(raw, "coder", where), f"{where} [coder]"),
        corpus=_corpus(_table(raw, "corpus", where), f"{where} [corpus]"),
        contexts=_contexts(_table(raw, "contexts", where), f"{where} [contexts]"),
        latents=_latents(_table(raw, "latents", where), f"{where} [latents]"),
        simulator=_simulator(_table(raw, "simulator", where), f"{where} [simulator]"),
        scoring=_scoring(_table(raw, "scoring", where), f"{where} [scoring]"),
        artifacts=dict(arts),
        folder=toml_path.parent,
        toml_path=toml_path,
        overrides=tuple(overrides or ()),
    )


def _read_toml(toml_path: Path) -> dict:
    where = str(toml_path)
    try:
        return tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{where}: task file not found") from None
    except UnicodeDecodeError as e:
        raise HarnessError(f"{where}: not UTF-8 text (byte {e.start}) — save the task file as UTF-8 TOML") from None
    except OSError as e:
        raise HarnessError(f"{where}: cannot read the task file ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, RecursionError) as e:
        raise HarnessError(f"{where}: invalid TOML ({e or 'nested too deep'})") from None


def _coder(coder: dict, w: str) -> CoderSpec:
    _only(coder, set(CoderSpec.__dataclass_fields__), w)
    _need(coder, "source", str, w)
    _need(coder, "hookpoint", str, w)
    _need(coder, "kind", str, w)
    _typed(coder, CoderSpec, w)
    return _build(CoderSpec, coder, w)


def _corpus(corpus: dict, w: str) -> CorpusSpec:
    _only(corpus, set(CorpusSpec.__dataclass_fields__), w)
    _need(corpus, "source", str, w)
    _typed(corpus, CorpusSpec, w)
    return _build(CorpusSpec, corpus, w)


def _contexts(ctx: dict, w: str) -> ContextSpec:
    _only(ctx, set(ContextSpec.__dataclass_fields__), w)
    _typed(ctx, ContextSpec, w)
    for key in ("T", "seed", "activation_sample_tokens", "calibration", "test", "detection_positive",
                "detection_negative"):
        _need(ctx, key, int, w)
    return _build(ContextSpec, ctx, w)


def _latents(lat: dict, w: str) -> LatentSpec:
    _only(lat, {"rewritten"}, w)
    rw = lat.get("rewritten", "all")
    if rw == "all":
        return LatentSpec("all")
    if isinstance(rw, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in rw) and rw:
        if len(set(rw)) != len(rw):
            raise HarnessError(f"{w}: `rewritten` lists a latent twice")
        return LatentSpec(tuple(sorted(rw)))
    if not isinstance(rw, dict):
        raise HarnessError(f'{w}: `rewritten` must be "all", a list of latent indices, or '
                           "{count, seed, rule[, min_fire_rate]}")
    _only(rw, {"count", "seed", "rule", "min_fire_rate"}, w + " rewritten")
    rule = rw.get("rule", "random-alive")
    if rule not in allowed(LatentRule):
        raise HarnessError(f"{w}: rewritten.rule must be {choice_text(allowed(LatentRule))}")
    mfr = rw.get("min_fire_rate", 0.0)
    if isinstance(mfr, bool) or not isinstance(mfr, (int, float)) or not 0 <= mfr < 1:
        raise HarnessError(f"{w}: rewritten.min_fire_rate must be a number in [0, 1), got {mfr!r}")
    count, seed = _need(rw, "count", int, w), rw.get("seed", 0)
    if count < 1 or not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise HarnessError(f"{w}: rewritten.count must be a positive integer and rewritten.seed a non-negative one")
    return LatentSpec("rule", count=count, rule=rule, seed=seed, min_fire_rate=float(mfr))


def _simulator(sim: dict, w: str) -> SimulatorSpec:
    _only(sim, MODEL_KEYS | {"prompt_version", "max_explanation_chars", "batch_size", "cascade"}, w)
    sim_model = _model_dict({k: v for k, v in sim.items() if k in MODEL_KEYS}, w)
    _typed(sim, SimulatorSpec, w)
    return _build(SimulatorSpec, dict(
        model=sim_model,
        prompt_version=_need(sim, "prompt_version", str, w),
        max_explanation_chars=_need(sim, "max_explanation_chars", int, w),
        batch_size=int(sim.get("batch_size", 32)),
        cascade=str(sim.get("cascade", "")),
    ), w)


def _scoring(sc: dict, w: str) -> ScoringSpec:
    _only(sc, set(ScoringSpec.__dataclass_fields__), w)
    _typed(sc, ScoringSpec, w)
    if "fractions" in sc:
        fr = sc["fractions"]
        if not isinstance(fr, list) or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in fr):
            raise HarnessError(f"{w}: `fractions` must be a list of numbers in (0, 1]")
        sc = {**sc, "fractions": tuple(float(f) for f in fr)}
    return _build(ScoringSpec, sc, w)


def tasks_dir() -> Path:
    env = os.environ.get("HARNESS_TASKS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "tasks"
    return repo if repo.is_dir() else Path.cwd() / "tasks"


def list_tasks(root: Path | None = None) -> list[TaskSpec]:
    root = root or tasks_dir()
    return [parse_task(p) for p in sorted(root.glob("*/task.toml"))]


def load_task(name_or_path: str, overrides: list[str] | None = None) -> TaskSpec:
    """A registered task id, a task folder, or a task.toml path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return parse_task(p, overrides)
    if p.is_dir() and (p / "task.toml").is_file():
        return parse_task(p / "task.toml", overrides)
    cand = tasks_dir() / name_or_path / "task.toml"
    if cand.is_file():
        return parse_task(cand, overrides)
    known = sorted(q.parent.name for q in tasks_dir().glob("*/task.toml"))
    raise HarnessError(
        f"unknown task {name_or_path!r}: known tasks are {', '.join(known) or '(none)'}; "
        "or pass a task folder / task.toml path (see `harness tasks`)"
    )


# The sections `harness prepare` reads (the activation tables' quantile grid is the only scoring setting it uses).
PREPARED_FROM = ("subject", "coder", "corpus", "contexts", "latents", "artifacts")
PREPARED_SCORING = ("n_quantiles", "quantile_method")


def prepared_key(spec: TaskSpec) -> str:
    """sha256 of what the prepared data depend on: the task hash less the simulator and the scoring settings
    `prepare` does not read. Tasks that differ only there (another simulator, prompt, cascade, bootstrap size)
    share one prepared cache, which for the paper's tasks is hours of subject forward passes."""
    d = _canonical(spec)
    part = {k: d[k] for k in ("id", *PREPARED_FROM)} | {"scoring": {k: d["scoring"][k] for k in PREPARED_SCORING}}
    return _digest(part)


def task_cache_path(spec: TaskSpec) -> Path:
    """Where the task's prepared data live (not created)."""
    from harness.io import cache_root

    return cache_root() / "tasks" / f"{spec.id}-{prepared_key(spec)[:12]}"


def task_cache_dir(spec: TaskSpec) -> Path:
    from harness.io import writable_dir

    return writable_dir(task_cache_path(spec), "cache", fix="set HARNESS_CACHE to a writable folder", create=True)
