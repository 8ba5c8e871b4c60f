"""Submissions: one natural-language explanation per latent, validated against a task (docs/protocol.md §7).

A submission is one UTF-8 JSON file::

    {
      "task": "tiny-llama-transcoder",
      "method": "top-tokens",
      "description": "free text: how the explanations were made",
      "explanations": {"0": "explanation of latent 0", "17": "..."},
      "scores": {"0": 0.83}
    }

- ``task``: the id of the task the explanations were written for; must equal the task being run.
- ``method``: a short, non-empty name shown on the leaderboard.
- ``description``: free text (may be empty) describing how the explanations were produced.
- ``explanations``: latent index -> explanation. Keys are decimal strings without leading zeros
  ("12", not "012" or "+12"), each in ``[0, num_latents)`` and each at most once. Values are
  strings of at most the task's ``max_chars`` characters. An empty or blank string is a valid
  explanation (the "empty" baseline scores exactly that). Latents without a key are simply not
  covered: the submission is scored on the rewritten latents it covers and the coverage is reported.
- ``scores`` (optional, may be ``null``): latent index -> finite number, the submission's own
  confidence in each explanation. When present, the "top-scoring" selection of the
  partial-rewriting curve ranks latents by it instead of by the detection score. Every scored
  latent must have an explanation.

No other top-level keys are accepted, so a typo ("explanation") fails loudly instead of silently
producing an empty submission.

Parsing is bounded, so a hostile file costs a one-line error, not a crash: ``method`` is at most
100 characters of visible text (no control character, line separator or bidirectional override: it is
printed on terminals); ``description`` is at most 10,000 characters; no JSON value is nested more than 8 levels deep (a submission needs 2); every string
must be valid Unicode (a ``\\ud800`` escape without its pair is not); and a file larger than
1 MiB + num_latents × (12 × max_chars + 100) bytes (every explanation at full length, written in
``\\u`` escapes) is refused before it is read.

The submission's identity is the sha256 of its canonical JSON (see ``canonical_json``): the same
content gives the same hash whatever the key order or whitespace of the file.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.io import atomic_write_text, unsafe_char

REQUIRED_KEYS = ("task", "method", "description", "explanations")
OPTIONAL_KEYS = ("scores",)

# Only one spelling per latent: "012" and "12" naming the same latent would be a silent duplicate.
_LATENT_KEY = re.compile(r"0|[1-9][0-9]*")

MAX_METHOD_CHARS = 100
MAX_DESCRIPTION_CHARS = 10_000
DELPHI_DEFAULT_MAX_CHARS = 4096   # import-delphi without a known task: a generous cap on one explanation
MAX_DEPTH = 8
# A JSON string (with \\ and \" escapes) or one structural bracket: strings are skipped when counting depth.
_DEPTH_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


@dataclass
class Submission:
    task: str
    method: str
    description: str
    explanations: dict[int, str]
    scores: dict[int, float] | None
    path: str
    sha256: str

    @classmethod
    def build(cls, task: str, method: str, explanations: Mapping[int, str], *, description: str = "",
              scores: Mapping[int, float] | None = None) -> Submission:
        """A submission made in code (the Python API); `harness.evaluate` checks it against its task as it
        checks a file."""
        expl = {int(k): v for k, v in explanations.items()}
        sc = None if scores is None else {int(k): float(v) for k, v in scores.items()}
        sub = cls(task=task, method=method, description=description, explanations=expl, scores=sc, path="",
                  sha256="")
        sub.sha256 = submission_sha256(sub.to_dict())
        return sub

    def to_dict(self) -> dict[str, Any]:
        """The content that is hashed and saved (string latent keys, numerically ordered)."""
        return canonical_dict(self.task, self.method, self.description, self.explanations, self.scores)


def canonical_dict(task: str, method: str, description: str, explanations: dict, scores: dict | None) -> dict:
    return {
        "task": task,
        "method": method,
        "description": description,
        "explanations": {str(k): v for k, v in sorted(explanations.items(), key=lambda kv: int(kv[0]))},
        "scores": None
        if scores is None
        # float() so that 1 and 1.0 hash alike
        else {str(k): float(v) for k, v in sorted(scores.items(), key=lambda kv: int(kv[0]))},
    }


def canonical_json(sub_dict: dict) -> str:
    """The hashed form: sorted keys, no whitespace, UTF-8 kept as is."""
    d = canonical_dict(
        sub_dict["task"],
        sub_dict["method"],
        sub_dict.get("description", ""),
        sub_dict["explanations"],
        sub_dict.get("scores"),
    )
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def submission_sha256(sub_dict: dict) -> str:
    return sha256(canonical_json(sub_dict).encode("utf-8")).hexdigest()


class _Obj(dict):
    """A JSON object that remembers which keys it saw more than once (json keeps the last silently)."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    obj.duplicates = []
    for k, v in pairs:
        if k in obj and k not in obj.duplicates:
            obj.duplicates.append(k)
        obj[k] = v
    return obj


def _reject_constant(name: str):
    # Python's json accepts NaN/Infinity, which are not JSON; other tools would choke on the file.
    raise ValueError(f"{name} is not valid JSON")


def _q(text: str, limit: int = 40) -> str:
    """User text quoted for an error message, cut short: a 5,000-digit key must not make a 5,000-column line."""
    return json.dumps(text if len(text) <= limit else text[:limit] + "…", ensure_ascii=False)


def _parse_latent_key(where: str, section: str, key: str, num_latents: int) -> int:
    if not _LATENT_KEY.fullmatch(key):
        raise HarnessError(
            f"{where}: {section}[{_q(key)}] is not a latent index; keys must be non-negative integers "
            f'written in decimal without sign, spaces or leading zeros, e.g. "12"'
        )
    # Compare lengths first: int() of a huge digit string is slow, and refused beyond 4,300 digits.
    if len(key) > len(str(num_latents)) or int(key) >= num_latents:
        raise HarnessError(
            f"{where}: {section}[{_q(key)}] is out of range; the task has {num_latents} latents "
            f"(indices 0 to {num_latents - 1}) — check that the submission was written for this task"
        )
    return int(key)


def _check_depth(where: str, text: str) -> None:
    depth = 0
    for m in _DEPTH_TOKEN.finditer(text):
        ch = m.group()
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, m.start()) + 1
                col = m.start() - text.rfind("\n", 0, m.start())
                raise HarnessError(
                    f"{where}: JSON nested more than {MAX_DEPTH} levels deep at line {line}, column {col} — "
                    "a submission is an object holding objects of strings and numbers"
                )
        elif ch in "]}":
            depth -= 1


def _first_surrogate(value: Any, entry: str) -> str | None:
    """The entry (e.g. 'explanations["3"]') holding the first lone surrogate, in a key or a string."""
    if isinstance(value, str):
        return entry if _is_surrogate_text(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        name = _q(k) if isinstance(k, str) else str(k)
        if isinstance(k, str) and _is_surrogate_text(k):
            return f"the key {entry}[{name}]" if entry else f"the key {name}"
        # Top-level sections read as in the other messages: explanations["3"], "description".
        sub = f"{entry}[{name}]" if entry else (str(k) if isinstance(v, (dict, list)) else name)
        found = _first_surrogate(v, sub)
        if found:
            return found
    return None


def _is_surrogate_text(s: str) -> bool:
    if s.isascii():
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_method(method: str, where: str) -> None:
    """A method name is one line of visible text: a control character (ESC, CR, NUL...), a line separator
    or a bidirectional override in it can only break or drive the terminal of whoever prints it."""
    for i, ch in enumerate(method):
        if unsafe_char(ch):
            raise HarnessError(
                f'{where}: "method" holds the control character {ascii(ch)} at position {i}; a method name is one '
                "line of visible text — remove it"
            )


def check_description(description: str, where: str) -> None:
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise HarnessError(
            f'{where}: "description" is {len(description):,} characters; it is copied into every result, '
            f"leaderboard and page — keep it to {MAX_DESCRIPTION_CHARS:,} and link to a longer write-up"
        )


def max_file_bytes(num_latents: int, max_chars: int) -> int:
    return (1 << 20) + num_latents * (12 * max_chars + 100)


def load_submission(path: str | os.PathLike, *, task_id: str, num_latents: int, max_chars: int) -> Submission:
    """Read and validate a submission; every problem is a one-line HarnessError naming the entry."""
    where = str(path)
    data = _read_json(Path(path), where, max_file_bytes(num_latents, max_chars))
    return _parse(data, where, where, task_id, num_latents, max_chars)


IN_MEMORY = "submission (in memory)"


def submission_from_dict(sub: Mapping[str, Any] | Submission, *, task_id: str, num_latents: int, max_chars: int,
                         where: str = IN_MEMORY) -> Submission:
    """A submission built in code (a dict shaped like the file, or a `Submission`), checked exactly as a file
    would be: it goes through JSON text, so a value JSON cannot hold (a set, NaN, a tuple key) is refused as a
    file holding it would be, and the sha256 is the one the same content saved to a file gets."""
    if isinstance(sub, Submission):
        sub = sub.to_dict()
    try:
        text = json.dumps(sub, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise HarnessError(f"{where}: not JSON data ({e}) — explanations must map latent index strings to strings, "
                           "scores to finite numbers") from None
    limit = max_file_bytes(num_latents, max_chars)
    if len(text.encode("utf-8")) > limit:
        raise HarnessError(f"{where}: {len(text):,} characters as JSON, more than any submission for this task can "
                           f"need ({limit} bytes) — check that it holds explanations for this task")
    data = _loads(text, where)
    # Made in code, it has no file: the result records no path (reproduce then asks for --submission).
    return _parse(data, where, "", task_id, num_latents, max_chars)


def _parse(data: Any, where: str, path: str, task_id: str, num_latents: int, max_chars: int) -> Submission:
    """The checked submission: `where` names it in errors, `path` is the file it records."""
    _check_top_level(data, where)
    task, method, description = _check_names(data, where, task_id)
    explanations = _explanations(data["explanations"], where, num_latents, max_chars)
    scores = _scores(data.get("scores"), where, num_latents, explanations)
    sub = Submission(
        task=task,
        method=method,
        description=description,
        explanations=explanations,
        scores=scores,
        path=path,
        sha256="",
    )
    sub.sha256 = submission_sha256(sub.to_dict())
    return sub


def _read_json(p: Path, where: str, limit: int) -> Any:
    """The file's JSON, its size checked before reading it whole; objects as `_Obj` (duplicates kept)."""
    if not p.is_file():
        raise HarnessError(f"{where}: submission file not found — check the path")
    size = p.stat().st_size
    if size > limit:
        raise HarnessError(
            f"{where}: {size} bytes, more than any submission for this task can need ({limit} bytes) — "
            "check that this is the submission file"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HarnessError(f"{where}: not UTF-8 text (byte {e.start}) — save the submission as UTF-8 JSON") from None
    except OSError as e:
        raise HarnessError(f"{where}: cannot read the submission ({e.strerror}) — check its permissions") from None
    return _loads(text, where)


def _loads(text: str, where: str) -> Any:
    """Submission JSON text, parsed: depth bounded, NaN refused, duplicate keys kept, lone surrogates refused."""
    _check_depth(where, text)
    try:
        data = json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise HarnessError(f"{where}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise HarnessError(f"{where}: invalid JSON: {e} — use null or a finite number") from None
    bad = _first_surrogate(data, "")
    if bad:
        raise HarnessError(
            f"{where}: {bad} holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is not "
            "Unicode text — fix the escape or the program that wrote the file"
        )
    return data


def _check_top_level(data: Any, where: str) -> None:
    if not isinstance(data, _Obj):  # every JSON object is one (object_pairs_hook)
        raise HarnessError(
            f"{where}: the top level is a JSON {_json_type(data)}; a submission is an object with keys "
            f"{', '.join(REQUIRED_KEYS)} (and optionally scores)"
        )
    if data.duplicates:
        raise HarnessError(f"{where}: top-level key {_q(data.duplicates[0])} appears more than once — keep one")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise HarnessError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)} — add them")
    unknown = sorted(k for k in data if k not in REQUIRED_KEYS + OPTIONAL_KEYS)
    if unknown:
        raise HarnessError(
            f"{where}: unknown key(s) {', '.join(repr(k[:40]) for k in unknown[:5])}; allowed keys are "
            f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}"
        )


def _check_names(data: _Obj, where: str, task_id: str) -> tuple[str, str, str]:
    """task, method and description, each checked."""
    task = data["task"]
    if not isinstance(task, str):
        raise HarnessError(f'{where}: "task" must be a string (the task id), got a {_json_type(task)}')
    if task != task_id:
        raise HarnessError(
            f'{where}: "task" is {_q(task)} but the task being run is "{task_id}" — '
            "set it to the task the explanations were written for, or run that task"
        )
    method = data["method"]
    if not isinstance(method, str) or not method.strip():
        raise HarnessError(f'{where}: "method" must be a non-empty string naming the method')
    if len(method) > MAX_METHOD_CHARS:
        raise HarnessError(
            f'{where}: "method" is {len(method)} characters; it is a name shown on the leaderboard — keep it to '
            f'{MAX_METHOD_CHARS} and put the details in "description"'
        )
    check_method(method, where)
    description = data["description"]
    if not isinstance(description, str):
        raise HarnessError(f'{where}: "description" must be a string (it may be empty)')
    check_description(description, where)
    return task, method, description


def _latent_object(raw: Any, where: str, key: str, values: str, one: str) -> _Obj:
    """`key`'s JSON object of latent index strings, each latent once."""
    if not isinstance(raw, _Obj):
        raise HarnessError(f'{where}: "{key}" must be an object mapping latent index strings to {values}; '
                           f"got a {_json_type(raw)}")
    if raw.duplicates:
        raise HarnessError(f"{where}: {key}[{_q(raw.duplicates[0])}] appears more than once — keep one {one} per "
                           "latent")
    return raw


def _explanations(raw_expl: Any, where: str, num_latents: int, max_chars: int) -> dict[int, str]:
    raw_expl = _latent_object(raw_expl, where, "explanations", "explanations", "explanation")
    if not raw_expl:
        raise HarnessError(f'{where}: "explanations" is empty — give at least one latent\'s explanation')
    explanations: dict[int, str] = {}
    for key, value in raw_expl.items():
        j = _parse_latent_key(where, "explanations", key, num_latents)
        if not isinstance(value, str):
            raise HarnessError(
                f"{where}: explanations[{_q(key)}] is a {_json_type(value)}; explanations must be strings "
                '(use "" for an empty explanation)'
            )
        if len(value) > max_chars:
            raise HarnessError(
                f"{where}: explanations[{_q(key)}] is {len(value)} characters; the task caps explanations "
                f"at {max_chars} — shorten it"
            )
        explanations[j] = value
    return explanations


def _scores(raw_scores: Any, where: str, num_latents: int, explanations: dict[int, str]) -> dict[int, float] | None:
    if raw_scores is None:
        return None
    raw_scores = _latent_object(raw_scores, where, "scores", "numbers, or null", "score")
    scores: dict[int, float] = {}
    for key, value in raw_scores.items():
        j = _parse_latent_key(where, "scores", key, num_latents)
        # bool is an int subclass; true/false as a score is almost certainly a mistake
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            got = json.dumps(value, ensure_ascii=False) if not isinstance(value, (dict, list)) else _json_type(value)
            raise HarnessError(f"{where}: scores[{_q(key)}] must be a finite number, got {got[:40]}")
        if j not in explanations:
            raise HarnessError(
                f"{where}: scores[{_q(key)}] scores latent {j}, which has no explanation — "
                "add the explanation or remove the score"
            )
        scores[j] = float(value)
    return scores


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def coverage(sub: Submission, rewritten: np.ndarray) -> tuple[np.ndarray, float]:
    """The rewritten latents the submission explains (in the task's order) and their fraction.

    An empty-string explanation counts as covered: it is a deliberate answer, not a missing one.
    The fraction is 0.0 when the task rewrites no latents.
    """
    rewritten = np.asarray(rewritten, dtype=np.int64).ravel()
    mask = np.fromiter((int(j) in sub.explanations for j in rewritten), dtype=bool, count=rewritten.size)
    covered = rewritten[mask]
    frac = float(covered.size / rewritten.size) if rewritten.size else 0.0
    return covered, frac


def scored_latents(sub: Submission, rewritten: np.ndarray, source) -> tuple[np.ndarray, float]:
    """`coverage`, refusing a submission that explains none of the rewritten latents (nothing to score)."""
    covered, frac = coverage(sub, rewritten)
    if not covered.size:
        raise HarnessError(f"{source}: explains none of the task's {np.asarray(rewritten).size} rewritten latents")
    return covered, frac


def save_submission(sub_dict: dict | Submission, path: str | os.PathLike) -> Path:
    """Write a submission as pretty JSON in a fixed order (keys as in the docstring, latents numeric).

    ``scores`` is omitted when absent. Written via a temp file so a crash never leaves half a file.
    """
    if isinstance(sub_dict, Submission):
        sub_dict = sub_dict.to_dict()
    d = canonical_dict(
        sub_dict["task"],
        sub_dict["method"],
        sub_dict.get("description", ""),
        sub_dict["explanations"],
        sub_dict.get("scores"),
    )
    if d["scores"] is None:
        del d["scores"]
    text = json.dumps(d, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write_text(Path(path), text)


# Delphi: "<hookpoint>_latent<N>.txt"; older sae-auto-interp: "<hookpoint>_feature<N>.txt".
_DELPHI_NAME = re.compile(r"^(?P<hook>.*?)_?(?:latent(?P<latent>\d+)|feature(?P<feature>\d+))\.txt$")


def _norm_hook(h: str) -> str:
    # sae-auto-interp wrote module paths with a leading dot (".layers.6"); Delphi does not.
    return h.strip(".")


def import_delphi(
    folder: str | os.PathLike,
    *,
    task_id: str,
    method: str,
    description: str,
    hookpoint: str | None = None,
    max_chars: int | None = None,
) -> dict:
    """Build a submission dict from a Delphi (or sae-auto-interp) explanations folder.

    ``folder`` is either the ``explanations/`` folder itself or a run folder containing one. Each
    file holds one latent's explanation, as a JSON string (what Delphi writes) or plain text.
    Explanations for several hookpoints in one folder need ``hookpoint`` to pick one, since latent
    indices of different hookpoints are unrelated. Each file's size is checked before it is read: at most
    what an explanation of ``max_chars`` characters (the task's cap; 4,096 when not given) can take in
    JSON escapes, so a stray 200 MB file costs one error line, not the memory to read it; a longer
    explanation is refused here rather than written into a submission `validate` would refuse. The
    result is otherwise not validated against the task: ``save_submission`` it and load it with
    ``load_submission``.
    """
    for name, value in (("method", method), ("description", description)):
        # Command-line text that is not valid UTF-8 arrives as lone surrogates (surrogateescape).
        if _is_surrogate_text(value):
            raise HarnessError(f"the {name} {ascii(value)} is not valid Unicode text — give it in UTF-8")
    check_method(method, "--method")
    check_description(description, "--description")
    cap = max_chars if max_chars is not None else DELPHI_DEFAULT_MAX_CHARS
    root = Path(folder)
    if not root.is_dir():
        raise HarnessError(f"{root}: Delphi folder not found — point to the run's explanations/ folder")
    if (root / "explanations").is_dir():
        root = root / "explanations"
    files = sorted(f for f in root.iterdir() if f.is_file())
    if not files:
        raise HarnessError(f"{root}: no explanation files — point to the run's explanations/ folder")

    parsed: list[tuple[str, int, Path]] = []
    for f in files:
        m = _DELPHI_NAME.match(f.name)
        if not m:
            raise HarnessError(
                f"{f}: file name does not look like a Delphi explanation (<hookpoint>_latent<N>.txt or "
                "<hookpoint>_feature<N>.txt) — remove it or point to the explanations/ folder"
            )
        idx = int(m.group("latent") if m.group("latent") is not None else m.group("feature"))
        parsed.append((_norm_hook(m.group("hook")), idx, f))

    hooks = sorted({h for h, _, _ in parsed})
    if hookpoint is not None:
        want = _norm_hook(hookpoint)
        parsed = [t for t in parsed if t[0] == want]
        if not parsed:
            raise HarnessError(
                f"{root}: no explanations for hookpoint {hookpoint!r}; the folder has "
                f"{', '.join(repr(h) for h in hooks)}"
            )
    elif len(hooks) > 1:
        raise HarnessError(
            f"{root}: explanations for several hookpoints ({', '.join(repr(h) for h in hooks)}) — "
            "choose one with the hookpoint option"
        )

    explanations: dict[int, str] = {}
    source: dict[int, Path] = {}
    for _, idx, f in parsed:
        if idx in source:
            raise HarnessError(
                f"{source[idx]} and {f} both explain latent {idx} — remove one of them"
            )
        explanations[idx] = _read_delphi_text(f, cap)
        source[idx] = f

    return {
        "task": task_id,
        "method": method,
        "description": description,
        "explanations": {str(j): explanations[j] for j in sorted(explanations)},
    }


def _read_delphi_text(f: Path, max_chars: int) -> str:
    size, limit = f.stat().st_size, 12 * max_chars + 1024   # every character as a \\u escape, plus quotes
    if size > limit:
        raise HarnessError(f"{f}: {size:,} bytes, more than an explanation of at most {max_chars:,} characters "
                           f"can take ({limit:,}) — remove the file or point to the explanations/ folder")
    try:
        raw = f.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise HarnessError(f"{f}: not UTF-8 text — re-export the explanations as UTF-8") from None
    if raw.startswith('"'):
        try:
            decoded = json.loads(raw)
        except json.JSONDecodeError:
            # A plain-text explanation that merely starts with a quote.
            decoded = None
        if isinstance(decoded, str):
            if _is_surrogate_text(decoded):
                raise HarnessError(f"{f}: holds a lone surrogate escape (\\ud800-\\udfff without its pair), which is "
                                   "not Unicode text — fix the escape or re-export the explanation")
            raw = decoded.strip()
    if len(raw) > max_chars:
        raise HarnessError(f"{f}: the explanation is {len(raw):,} characters; the task caps explanations at "
                           f"{max_chars:,} — shorten it")
    return raw
