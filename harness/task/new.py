"""`harness new-task`: a task folder written from a subject, a coder, a hookpoint, a corpus and split sizes.

It pins what it can (hub revisions as commits, local files by sha256 in [artifacts]), copies a local coder
into the task folder (`coder/<hookpoint>/`, so the folder is self-contained), takes the simulator and scoring
settings from a template task (`--like`, default the offline mini task), and refuses, one line each, what the
harness could not score: a coder it cannot read or a kind that contradicts it, a coder whose width is not the
subject's, a hookpoint the subject has not, an SAE trained on another hook than the one given, a ReLU/JumpReLU
coder without `--k`. The written folder is then loaded back by the task loader, so a task `new-task` writes is
one `harness eval` accepts.

Sources are written `kind:where`: `hub:ORG/NAME@COMMIT`, `gguf:PACKAGE/FILE`, or a path; a corpus `hub:` may add
`:split` and `#text_field` (`hub:allenai/c4@<commit>:validation#text`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.io import sha256_file

DEFAULT_LIKE = "smollm2-135m-l8-offline-mini"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TL_RESID = re.compile(r"blocks\.(\d+)\.hook_resid_post")
_TL_MLP_OUT = re.compile(r"blocks\.(\d+)\.hook_mlp_out")
_TL_MLP_IN = re.compile(r"blocks\.(\d+)\.mlp\.hook_in")
CONTEXT_KEYS = ("T", "seed", "min_position", "activation_sample_tokens", "calibration", "test",
                "detection_positive", "detection_negative", "detection_pool")


@dataclass
class NewTask:
    """What `harness new-task` is given; None/empty: the template task's value, or what the coder says."""

    out: Path
    id: str
    subject: str
    coder: str
    corpus: str
    hookpoint: str = ""
    kind: str = ""
    k: int = 0                                   # ReLU/JumpReLU coders: the most latents stored per token
    description: str = ""
    subject_dtype: str = "float32"
    corpus_offset: int = 0
    corpus_files: str = ""                       # hub corpus: one file of the dataset repo
    rewritten: str = "all"                       # "all", N (random alive), or N:rule[:min_fire_rate]
    like: str = DEFAULT_LIKE
    contexts: dict[str, int] = field(default_factory=dict)
    cascade: str | None = None                   # None: the template's; "": exhaustive
    rank_by: str | None = None
    command: str = ""
    neuronpedia: str = ""                        # found, not given: a SAELens cfg's neuronpedia_id


def write_task(nt: NewTask) -> Path:
    """Write `nt.out/task.toml` (and the coder copy); returns its path. Nothing is left behind on refusal."""
    from harness.task.spec import _TASK_ID, _read_toml, load_task, parse_task

    if not _TASK_ID.fullmatch(nt.id):
        raise HarnessError(f"--id {nt.id!r}: letters, digits, '.', '_' or '-' (at most 100), starting with a letter "
                           "or digit")
    out = Path(nt.out)
    if out.exists() and any(out.iterdir()):
        raise HarnessError(f"{out}: exists and is not empty — choose a new folder for the task")
    like = load_task(nt.like)
    like_raw = _read_toml(like.toml_path)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        artifacts: dict[str, str] = {}
        coder, num_latents, k = _coder(nt, out, artifacts)
        sections: dict[str, Any] = {
            "id": nt.id,
            "description": nt.description or _description(nt, coder, num_latents),
            "subject": _subject(nt, out, artifacts),
            "coder": {**coder, "num_latents": num_latents, "k": k},
            "corpus": _corpus(nt, out, artifacts),
            "contexts": {key: nt.contexts.get(key, like_raw["contexts"].get(key)) for key in CONTEXT_KEYS
                         if nt.contexts.get(key, like_raw["contexts"].get(key)) is not None},
            "latents": {"rewritten": _rewritten(nt.rewritten, num_latents)},
            "simulator": _simulator(like_raw["simulator"], nt.cascade, like.folder, out),
            "scoring": {**like_raw.get("scoring", {}), **({"rank_by": nt.rank_by} if nt.rank_by else {})},
            "artifacts": artifacts,
        }
        path = out / "task.toml"
        path.write_text(_header(nt) + to_toml(sections), encoding="utf-8")
        spec = parse_task(path)
        _check_fit(spec)
        return path
    except BaseException:
        for p in [out] if created else list(out.iterdir()):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        raise


def _header(nt: NewTask) -> str:
    cmd = f"\n# {nt.command}" if nt.command else ""
    return f"# Written by `harness new-task` (simulator and scoring from the task {nt.like}).{cmd}\n"


# ---------------------------------------------------------------- the four inputs

def _subject(nt: NewTask, out: Path, artifacts: dict[str, str]) -> dict[str, Any]:
    kind, rest = _split_source(nt.subject)
    if kind == "hub":
        repo, rev = _pinned(rest, "--subject", "model")
        return {"source": "hub", "id": repo, "revision": rev, "dtype": nt.subject_dtype}
    if kind == "gguf":
        package, _, file = rest.partition("/")
        if not package or not file:
            raise HarnessError(f"--subject {nt.subject!r}: write gguf:PACKAGE/FILE (an installed package holding "
                               "the GGUF file)")
        return {"source": "gguf-package", "package": package, "file": file, "dtype": nt.subject_dtype}
    folder = Path(rest)
    if not (folder / "config.json").is_file():
        raise HarnessError(f"--subject {rest}: not a transformers model folder (no config.json); give a folder, "
                           "hub:ORG/NAME@COMMIT or gguf:PACKAGE/FILE")
    for f in sorted(folder.glob("*.safetensors")):
        artifacts[_rel(f, out)] = sha256_file(f)
    return {"source": "local", "path": _rel(folder, out), "dtype": nt.subject_dtype}


def _coder(nt: NewTask, out: Path, artifacts: dict[str, str]) -> tuple[dict[str, Any], int, int]:
    """The [coder] table, the coder's width and k; a local coder is copied to `coder/<hookpoint>/`."""
    from harness.model.coder import SparseCoder
    from harness.task.inputs import CODER_FILES, SAELENS_FILES

    kind, rest = _split_source(nt.coder)
    if kind == "gguf":
        raise HarnessError(f"--coder {nt.coder!r}: a coder is a folder, hub:REPO@COMMIT/SUBFOLDER or "
                           "saelens:RELEASE/SAE_ID")
    if kind == "saelens":
        return _saelens_release(nt, rest)
    if kind == "hub":
        org, _, name_rev_sub = rest.partition("/")
        name_rev, _, sub = name_rev_sub.partition("/")
        repo, rev = _pinned(f"{org}/{name_rev}", "--coder", "model")
        if not nt.hookpoint or not nt.kind:
            raise HarnessError(f"--coder {nt.coder}: a hub coder needs --hookpoint and --kind (nothing is downloaded "
                               "here)")
        if not nt.k:
            raise HarnessError(f"--coder {nt.coder}: give --k (the coder's k, or for a ReLU/JumpReLU coder the most "
                               "latents stored per token)")
        table = {"source": "hub", "repo": repo, "revision": rev, "subfolder": sub or nt.hookpoint,
                 "hookpoint": nt.hookpoint, "kind": nt.kind}
        return table, 0, nt.k
    src = Path(rest)
    coder = SparseCoder.load(src, kind=nt.kind or None, k=nt.k)
    hookpoint = _hookpoint(src, coder, nt.hookpoint)
    if coder.source_format != "saelens" and nt.k and nt.k != coder.k:
        raise HarnessError(f"--k {nt.k}: the TopK coder in {src} has k = {coder.k}")
    dest = out / "coder" / hookpoint
    dest.mkdir(parents=True)
    for name in SAELENS_FILES if coder.source_format == "saelens" else CODER_FILES:
        shutil.copyfile(src / name, dest / name)
        artifacts[f"coder/{hookpoint}/{name}"] = sha256_file(dest / name)
    table = {"source": "local", "path": f"coder/{hookpoint}", "hookpoint": hookpoint, "kind": coder.kind}
    if coder.source_format == "saelens":
        from harness.model.saelens import neuronpedia_id

        # What import-neuronpedia's --source names, kept for the description (not part of the spec).
        nt.neuronpedia = neuronpedia_id(coder.cfg)
    return table, coder.num_latents, coder.k


def _saelens_release(nt: NewTask, rest: str) -> tuple[dict[str, Any], int, int]:
    """A SAELens registry entry, resolved by the sae-lens package's own directory (when installed)."""
    release, _, sae_id = rest.partition("/")
    try:
        from sae_lens.loading.pretrained_saes_directory import (  # type: ignore[import-not-found]
            get_pretrained_saes_directory,
        )
    except ImportError:
        raise HarnessError(f"--coder saelens:{rest}: resolving a SAELens release needs the sae-lens package "
                           "(pip install sae-lens), or give the coder as hub:REPO@COMMIT/PATH with --hookpoint, "
                           "--kind and --k") from None
    entry = get_pretrained_saes_directory().get(release)
    if entry is None or sae_id not in getattr(entry, "saes_map", {}):
        raise HarnessError(f"--coder saelens:{rest}: no SAE {sae_id!r} in the SAELens release {release!r}")
    if getattr(entry, "conversion_func", None):
        raise HarnessError(f"--coder saelens:{rest}: the release is stored in another format ({entry.conversion_func}) "
                           "that sae-lens converts on load; save it with sae-lens (SAE.save_model) and give the folder")
    # The registry names a repo and a folder, not a commit: the branch is resolved to one (online) and pinned.
    return _coder(NewTask(**{**nt.__dict__, "coder": f"hub:{entry.repo_id}@main/{entry.saes_map[sae_id]}"}),
                  Path(nt.out), {})


def _hookpoint(src: Path, coder: Any, given: str) -> str:
    """The given hookpoint, else the coder's own: a SAELens cfg's hook mapped to a module path, a sparsify
    folder's name; a given one that contradicts the SAELens cfg is refused."""
    if coder.source_format != "saelens":
        return given or src.name   # sparsify keeps one folder per hookpoint, named for it
    from harness.model.saelens import hook_name

    hin, hout = hook_name(coder.cfg)
    mapped = map_tl_hook(hin, hout, coder.kind)
    if not given and not mapped:
        raise HarnessError(f"{src}: the SAE was trained on {hin or 'an unnamed hook'!r}, which the harness does not map "
                           "to a module; give --hookpoint (a module path such as layers.8) if you know it is the "
                           "same activation")
    if given and hin and mapped and mapped != given:
        raise HarnessError(f"--hookpoint {given}: the SAE in {src} was trained on {hin} (the harness's {mapped}); "
                           "leave --hookpoint out or give that")
    return given or mapped


def map_tl_hook(hin: str, hout: str, kind: str) -> str:
    """The harness hookpoint (a module path) of a TransformerLens hook, '' where none computes the same thing.

    An SAE reads and replaces a module's output: `blocks.N.hook_resid_post` is decoder layer N's output,
    `blocks.N.hook_mlp_out` its MLP's. A transcoder reads the MLP's input and replaces its output:
    `blocks.N.mlp.hook_in` → `blocks.N.hook_mlp_out`. `ln2.hook_normalized` (the norm before its gain) and
    `hook_mlp_in` (the residual before the norm) are other activations, so they map to nothing.
    """
    if kind == "sae":
        if m := _TL_RESID.fullmatch(hin):
            return f"layers.{m.group(1)}"
        if m := _TL_MLP_OUT.fullmatch(hin):
            return f"layers.{m.group(1)}.mlp"
        return ""
    m_in, m_out = _TL_MLP_IN.fullmatch(hin), _TL_MLP_OUT.fullmatch(hout)
    if m_in and m_out and m_in.group(1) == m_out.group(1):
        return f"layers.{m_in.group(1)}.mlp"
    return ""


def _corpus(nt: NewTask, out: Path, artifacts: dict[str, str]) -> dict[str, Any]:
    kind, rest = _split_source(nt.corpus)
    offset = {"offset": nt.corpus_offset} if nt.corpus_offset else {}
    if kind == "hub":
        m = re.fullmatch(r"([^@:#]+)@([^:#]+)(?::([^#]+))?(?:#(.+))?", rest)
        if not m:
            raise HarnessError(f"--corpus {nt.corpus!r}: write hub:DATASET@COMMIT[:split][#text_field]")
        repo, rev = _pinned(f"{m.group(1)}@{m.group(2)}", "--corpus", "dataset")
        if nt.corpus_offset:
            raise HarnessError("--corpus-offset applies to a local token file (local-tokens) only")
        table = {"source": "hub", "dataset": repo, "revision": rev, "split": m.group(3) or "train",
                 "text_field": m.group(4) or "text"}
        return {**table, **({"data_files": nt.corpus_files} if nt.corpus_files else {})}
    if kind == "gguf":
        raise HarnessError(f"--corpus {nt.corpus!r}: a corpus is a .npz of tokens, a .txt/.jsonl file or "
                           "hub:DATASET@COMMIT")
    path = Path(rest)
    if not path.is_file():
        raise HarnessError(f"--corpus {rest}: file not found")
    artifacts[_rel(path, out)] = sha256_file(path)
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path) as z:
            if "tokens" not in z.files:
                raise HarnessError(f"--corpus {rest}: a token file must hold an array named `tokens`")
        return {"source": "local-tokens", "path": _rel(path, out), **offset}
    if path.suffix not in (".txt", ".jsonl") and not path.name.endswith((".jsonl.zst", ".txt.zst")):
        raise HarnessError(f"--corpus {rest}: give a .npz of tokens or a .txt/.jsonl text file")
    if nt.corpus_offset:
        raise HarnessError("--corpus-offset applies to a local token file (.npz) only")
    return {"source": "local-text", "path": _rel(path, out)}


def _rewritten(text: str, num_latents: int) -> Any:
    if text == "all":
        return "all"
    parts = text.split(":")
    if not parts[0].isdigit() or int(parts[0]) < 1 or len(parts) > 3:
        raise HarnessError(f"--rewritten {text!r}: write all, N, or N:rule[:min_fire_rate] (rules: random-alive, "
                           "most-frequent, stratified, lexical)")
    count = int(parts[0])
    if num_latents and count > num_latents:
        raise HarnessError(f"--rewritten {count}: the coder has {num_latents} latents")
    table: dict[str, Any] = {"count": count, "seed": 0, "rule": parts[1] if len(parts) > 1 else "random-alive"}
    if len(parts) == 3:
        table["min_fire_rate"] = float(parts[2])
    return table


def _simulator(table: dict[str, Any], cascade: str | None, like_folder: Path, out: Path) -> dict[str, Any]:
    sim = dict(table)
    if sim.get("path") and not Path(sim["path"]).expanduser().is_absolute():
        sim["path"] = _rel(Path(like_folder) / sim["path"], out)   # the template's folder, seen from the new one
    if cascade is not None:
        sim.pop("cascade", None)
        if cascade:
            sim["cascade"] = cascade
    return sim


# ---------------------------------------------------------------- checks

def _check_fit(spec: Any) -> None:
    """The coder's width is the subject's and the hookpoint is one of its modules (from its config alone: the
    model is built on the meta device, no weights read); a subject whose config is not here is not checked."""
    config = _subject_config(spec)
    if config is None:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.model.patch import resolve_hookpoint
    from harness.task.inputs import TaskInputs

    try:
        cfg = AutoConfig.for_model(**config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    except (ValueError, KeyError, TypeError, ImportError) as e:
        import sys

        sys.stderr.write(f"note: {spec.toml_path}: the subject could not be built from its config ({type(e).__name__});"
                         " its hookpoint and width were not checked\n")
        return
    resolve_hookpoint(model, spec.coder.hookpoint)
    hidden = getattr(cfg, "hidden_size", None)
    if spec.coder.source == "local":
        d_in = TaskInputs(spec).coder().d_in
        if hidden is not None and d_in != hidden:
            raise HarnessError(f"{spec.toml_path}: the coder reads {d_in}-wide activations but the subject's hidden "
                               f"size is {hidden}; wrong coder or subject")


def _subject_config(spec: Any) -> dict[str, Any] | None:
    s = spec.subject
    path: Path | None = None
    if s["source"] == "local":
        path = spec.resolve(s["path"]) / "config.json"
    elif s["source"] == "hub":
        from harness.hub import cached_file

        found = cached_file(s["id"], "config.json", s.get("revision", ""))
        path = Path(found) if found else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _pinned(repo_rev: str, flag: str, repo_type: str) -> tuple[str, str]:
    """(repo, commit): a branch or tag is resolved to its commit when the Hub answers, else refused."""
    repo, _, rev = repo_rev.partition("@")
    if not repo or "/" not in repo:
        raise HarnessError(f"{flag} hub:{repo_rev}: write hub:ORG/NAME@COMMIT")
    if _COMMIT.fullmatch(rev):
        return repo, rev
    from harness.hub import hub_offline, hub_reachable

    if hub_offline() or not hub_reachable():
        raise HarnessError(f"{flag} hub:{repo_rev}: give the revision as a 40-hex commit (the Hub cannot be reached "
                           f"to resolve {rev or 'main'!r}); a task pins what it reads")
    from huggingface_hub import HfApi

    try:
        info = HfApi().repo_info(repo, revision=rev or None, repo_type=repo_type)
    except Exception as e:   # not found, gated, no network after all: each is one line
        raise HarnessError(f"{flag} hub:{repo_rev}: cannot resolve {rev or 'main'!r} on the Hub "
                           f"({type(e).__name__}); give the revision as a 40-hex commit") from None
    return repo, str(info.sha)


def _description(nt: NewTask, coder: dict[str, Any], num_latents: int) -> str:
    text = (f"{coder['kind']} at {coder['hookpoint']} ({num_latents or '?'} latents) of {_name(nt.subject)}, "
            "written by harness new-task")
    return text + (f"; Neuronpedia: {nt.neuronpedia}" if nt.neuronpedia else "")


def _name(source: str) -> str:
    """A source as a description names it: a path by its last part (no one's home folder in a task file)."""
    kind, rest = _split_source(source)
    return rest if kind != "path" else Path(rest).name


def _split_source(text: str) -> tuple[str, str]:
    for kind in ("hub", "gguf", "saelens"):
        if text.startswith(kind + ":"):
            return kind, text[len(kind) + 1:]
    return "path", text


def _rel(path: Path, out: Path) -> str:
    """A path as the task file writes it: relative to the task folder (tasks move with their files)."""
    return Path(os.path.relpath(Path(path).absolute(), Path(out).absolute())).as_posix()


# ---------------------------------------------------------------- TOML out

def to_toml(sections: dict[str, Any]) -> str:
    """Top-level keys, then one [table] per dict (strings, integers, floats, lists, inline tables)."""
    lines = [f"{k} = {_value(v)}" for k, v in sections.items() if not isinstance(v, dict)]
    for name, table in sections.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]"] + [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")
