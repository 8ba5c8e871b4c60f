"""`harness import-neuronpedia`: Neuronpedia's explanation exports turned into a submission.

Neuronpedia (neuronpedia.org) hosts auto-interp explanations for the latents of thousands of SAEs, each SAE
named by a model id and a source id (its `layer` field, e.g. `gpt2-small` / `6-res-jb`; SAELens's registry
gives the pair as `neuronpedia: "<modelId>/<layer>"`). Three shapes are read (docs/bring-your-own.md):

- the dataset export, `v1/<modelId>/<layer>/explanations/batch-<N>.jsonl.gz` (a file, or the folder holding
  them): one explanation object per line, `modelId`, `layer`, `index` (a string, an integer in some exports),
  `description`, and optionally `explanationModelName`, `typeName`, `createdAt`, `id`, `embedding`...;
- the older explanations-only export, one JSON array of such objects;
- the per-feature API (`/api/feature/<modelId>/<layer>/<index>`): an object (or an array of them) whose
  `explanations` list holds `description`, `explanationModelName`, `typeName` and `scores`
  ([{`value` 0–1, `explanationScoreTypeName`...}]).

A latent often has several explanations. One is chosen by a stated rule (`--choose`): `newest` (the latest
`createdAt`; rows without one after rows with one; then reading order), `first` (reading order: files by
batch number, lines in order), or `score` (the highest score of one `--score-type`, as scores of different
types do not compare; unscored rows last; then `newest`). `--explainer` keeps one explainer model's rows.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.errors import HarnessError
from harness.task.submission import (
    DELPHI_DEFAULT_MAX_CHARS,
    _is_surrogate_text,
    check_description,
    check_method,
)

Choice = Literal["newest", "first", "score"]
CHOICES: tuple[Choice, ...] = ("newest", "first", "score")
MAX_LINE_BYTES = 1 << 20          # one explanation object, with its 256-float embedding, is a few KB
MAX_JSON_BYTES = 256 << 20        # an array export or API dump read whole
MAX_FILE_DECOMPRESSED = 1 << 30   # a .jsonl.gz read line by line: stops a zip bomb, passes any real batch
_BATCH = re.compile(r"^batch-(\d+)\.jsonl(?:\.gz)?$")
_INDEX = re.compile(r"0|[1-9][0-9]*")


@dataclass
class Row:
    """One explanation as read, with where it was read (for errors and the `first` rule)."""

    where: str                       # file:line or file[entry]
    order: int                       # reading order
    model_id: str
    layer: str
    index: int
    description: str
    explainer: str | None = None
    type_name: str | None = None
    created: _dt.datetime | None = None
    scores: dict[str, float] = field(default_factory=dict)   # type -> best value, per-feature API only


@dataclass
class Imported:
    """The submission dict and what was read to make it."""

    submission: dict[str, Any]
    source: str                      # modelId/layer
    n_rows: int                      # explanation rows read for that source (after --explainer)
    n_several: int                   # latents that had more than one to choose from
    n_blank: int                     # rows without text, skipped
    rule: str


def import_neuronpedia(paths: Sequence[str | os.PathLike], *, task_id: str, method: str = "neuronpedia",
                       description: str = "", source: str | None = None, explainer: str | None = None,
                       choose: Choice = "newest", score_type: str | None = None, num_latents: int | None = None,
                       max_chars: int | None = None) -> Imported:
    """Read the exports at `paths` (files or folders) and choose one explanation per latent."""
    for name, value in (("method", method), ("description", description)):
        if _is_surrogate_text(value):
            raise HarnessError(f"the {name} {ascii(value)} is not valid Unicode text — give it in UTF-8")
    check_method(method, "--method")
    check_description(description, "--description")
    if choose not in CHOICES:
        raise HarnessError(f"--choose {choose!r}: use one of {', '.join(CHOICES)}")
    if (choose == "score") != bool(score_type):
        raise HarnessError("--choose score needs --score-type NAME (e.g. recall_alt), and --score-type needs "
                           "--choose score: scores of different types do not compare")
    cap = max_chars if max_chars is not None else DELPHI_DEFAULT_MAX_CHARS
    rows = list(_read_all([Path(p) for p in paths], cap))
    rows, src = _one_source(rows, source, paths)
    if explainer is not None:
        rows = _by_explainer(rows, explainer, src)
    blank = [r for r in rows if not r.description]
    rows = [r for r in rows if r.description]
    if not rows:
        raise HarnessError(f"{src}: every explanation read is blank — nothing to import")
    if num_latents is not None:
        for r in rows:
            if r.index >= num_latents:
                raise HarnessError(f"{r.where}: index {r.index} is out of range; the task has {num_latents} latents "
                                   f"(0 to {num_latents - 1}) — check that {src} is the task's coder")
    by_latent: dict[int, list[Row]] = {}
    for r in rows:
        by_latent.setdefault(r.index, []).append(r)
    chosen = {j: _choose(c, choose, score_type) for j, c in sorted(by_latent.items())}
    rule = choose + (f" ({score_type})" if score_type else "") + (f", explainer {explainer}" if explainer else "")
    sub: dict[str, Any] = {
        "task": task_id, "method": method,
        "description": description or f"Neuronpedia explanations of {src}, one per latent by the rule: {rule}",
        "explanations": {str(j): r.description for j, r in chosen.items()},
    }
    if score_type and all(score_type in r.scores for r in chosen.values()):
        sub["scores"] = {str(j): r.scores[score_type] for j, r in chosen.items()}
    return Imported(sub, src, len(rows) + len(blank), sum(len(c) > 1 for c in by_latent.values()), len(blank), rule)


# ---------------------------------------------------------------- choosing

def _choose(cands: list[Row], rule: Choice, score_type: str | None) -> Row:
    if rule == "first":
        return min(cands, key=lambda r: r.order)
    newest = sorted(cands, key=lambda r: (r.created is None, -(r.created.timestamp() if r.created else 0), r.order))
    if rule == "newest":
        return newest[0]
    assert score_type is not None
    rank = {id(r): i for i, r in enumerate(newest)}
    return min(cands, key=lambda r: (score_type not in r.scores, -r.scores.get(score_type, 0.0), rank[id(r)]))


def _one_source(rows: list[Row], source: str | None, paths: Sequence[Any]) -> tuple[list[Row], str]:
    """Latent indices of different SAEs are unrelated: the rows of one (modelId, layer) only."""
    names = sorted({f"{r.model_id}/{r.layer}" for r in rows})
    where = ", ".join(str(p) for p in paths)
    if not names:
        raise HarnessError(f"{where}: no explanations found — point to a Neuronpedia export (batch-N.jsonl[.gz], "
                           "an explanations JSON array, or /api/feature JSON)")
    if source is None:
        if len(names) > 1:
            raise HarnessError(f"{where}: explanations of several SAEs ({', '.join(names[:6])}) — choose one with "
                               "--source MODEL/LAYER")
        return rows, names[0]
    if source not in names:
        raise HarnessError(f"{where}: no explanations of --source {source!r}; found {', '.join(names[:6])}")
    return [r for r in rows if f"{r.model_id}/{r.layer}" == source], source


def _by_explainer(rows: list[Row], explainer: str, src: str) -> list[Row]:
    kept = [r for r in rows if r.explainer == explainer]
    if not kept:
        counts: dict[str, int] = {}
        for r in rows:
            counts[str(r.explainer)] = counts.get(str(r.explainer), 0) + 1
        found = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:6])
        raise HarnessError(f"{src}: no explanation by --explainer {explainer!r}; explainers found: {found}")
    return kept


# ---------------------------------------------------------------- reading

def _files(paths: list[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            batches = sorted((f for f in p.iterdir() if _BATCH.match(f.name)),
                             key=lambda f: int(_BATCH.match(f.name).group(1)))   # type: ignore[union-attr]
            if not batches:
                raise HarnessError(f"{p}: no batch-<N>.jsonl[.gz] files — point to the export's explanations/ "
                                   "folder or to a file")
            yield from batches
        elif p.is_file():
            yield p
        else:
            raise HarnessError(f"{p}: not found — point to a Neuronpedia export file or folder")


def _read_all(paths: list[Path], cap: int) -> Iterator[Row]:
    order = 0
    for f in _files(paths):
        if f.name.endswith((".jsonl", ".jsonl.gz")):
            objects = _jsonl(f)
        else:
            objects = _json_items(f)
        for where, obj in objects:
            for row in _rows(obj, where, order, cap):
                order += 1
                yield row


def _jsonl(f: Path) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if f.name.endswith(".gz") else open
    total = 0
    try:
        with opener(f, "rb") as fh:
            for n, line in enumerate(iter(lambda: fh.readline(MAX_LINE_BYTES + 1), b""), 1):
                total += len(line)
                if len(line) > MAX_LINE_BYTES or total > MAX_FILE_DECOMPRESSED:
                    raise HarnessError(f"{f}:{n}: a line over {MAX_LINE_BYTES:,} bytes (or the file over "
                                       f"{MAX_FILE_DECOMPRESSED:,} decompressed) — not a Neuronpedia export")
                if line.strip():
                    yield f"{f}:{n}", _loads(line, f"{f}:{n}")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise HarnessError(f"{f}: cannot be read ({e}) — re-download the export") from None


def _json_items(f: Path) -> Iterator[tuple[str, Any]]:
    size = f.stat().st_size
    if size > MAX_JSON_BYTES:
        raise HarnessError(f"{f}: {size:,} bytes; a JSON export is read whole, at most {MAX_JSON_BYTES:,} — split "
                           "it, or use the batch-N.jsonl.gz dataset export")
    data = _loads(f.read_bytes(), str(f))
    items = data if isinstance(data, list) else [data]
    for i, obj in enumerate(items):
        yield f"{f}[{i}]", obj


def _loads(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise HarnessError(f"{where}: not UTF-8 (byte {e.start}) — re-download the export") from None
    except RecursionError:
        raise HarnessError(f"{where}: JSON nested too deep — not a Neuronpedia export") from None
    except ValueError as e:
        raise HarnessError(f"{where}: invalid JSON ({str(e)[:80]}) — re-download the export") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _rows(obj: Any, where: str, order: int, cap: int) -> Iterator[Row]:
    if not isinstance(obj, dict):
        raise HarnessError(f"{where}: a JSON {type(obj).__name__}, not an explanation object — not a Neuronpedia "
                           "export")
    if isinstance(obj.get("explanations"), list):   # a per-feature API object: its explanations inherit its ids
        for i, e in enumerate(obj["explanations"]):
            if not isinstance(e, dict):
                raise HarnessError(f"{where}.explanations[{i}]: not an object")
            yield _row({**{k: obj.get(k) for k in ("modelId", "layer", "index")}, **e},
                       f"{where}.explanations[{i}]", order + i, cap)
        return
    yield _row(obj, where, order, cap)


def _row(d: dict[str, Any], where: str, order: int, cap: int) -> Row:
    for key in ("modelId", "layer", "description"):
        if not isinstance(d.get(key), str):
            raise HarnessError(f"{where}: `{key}` must be a string, got {_kind(d.get(key))} — not a Neuronpedia "
                               "explanation object (modelId, layer, index, description)")
    index = d.get("index")
    text = str(index) if isinstance(index, int) and not isinstance(index, bool) else index
    if not isinstance(text, str) or not _INDEX.fullmatch(text) or len(text) > 12:
        raise HarnessError(f"{where}: `index` {str(index)[:20]!r} is not a latent index (a non-negative integer)")
    desc = d["description"].strip()    # older exports start many descriptions with a space
    if _is_surrogate_text(desc):
        raise HarnessError(f"{where}: the description holds a lone surrogate, which is not Unicode text")
    if len(desc) > cap:
        raise HarnessError(f"{where}: the description is {len(desc):,} characters; the task caps explanations at "
                           f"{cap:,} — drop the row or shorten it")
    return Row(where=where, order=order, model_id=d["modelId"], layer=d["layer"], index=int(text), description=desc,
               explainer=_opt_str(d, "explanationModelName", where), type_name=_opt_str(d, "typeName", where),
               created=_created(d.get("createdAt"), where), scores=_scores(d.get("scores"), where))


def _opt_str(d: dict[str, Any], key: str, where: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise HarnessError(f"{where}: `{key}` must be a string or null, got {_kind(v)}")
    return v


def _created(v: Any, where: str) -> _dt.datetime | None:
    if v is None:
        return None
    try:
        t = _dt.datetime.fromisoformat(str(v))
    except ValueError:
        raise HarnessError(f"{where}: `createdAt` {str(v)[:40]!r} is not an ISO date-time") from None
    # Script-written exports are naive (the exporter's clock), the API's are UTC: both compared as UTC.
    return t.astimezone(_dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def _scores(v: Any, where: str) -> dict[str, float]:
    if v is None:
        return {}
    if not isinstance(v, list):
        raise HarnessError(f"{where}: `scores` must be a list of score objects, got {_kind(v)}")
    out: dict[str, float] = {}
    for i, s in enumerate(v):
        kind, value = (s.get("explanationScoreTypeName"), s.get("value")) if isinstance(s, dict) else (None, None)
        if not isinstance(kind, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HarnessError(f"{where}: scores[{i}] needs a string explanationScoreTypeName and a numeric value")
        out[kind] = max(out.get(kind, float("-inf")), float(value))
    return out


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__
