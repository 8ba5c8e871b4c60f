"""Downloads from the Hugging Face Hub, pinned and verified, failing fast and clearly when offline.

Every Hub input of a task (coder files, subject model, corpus file) is first looked for in the local
Hugging Face cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, read when called, not at import). When something
is missing and the Hub cannot be reached (HF_HUB_OFFLINE=1, or a 3-second connection probe fails),
`require_hub_inputs` stops at once with one line listing everything missing and how to provide it,
instead of letting huggingface_hub retry for half a minute.

A `path` next to a hub source (`--override coder.path=DIR`, `subject.path=DIR`, `corpus.path=FILE`)
replaces the download by a local copy of the same files; the task hash does not change (where a file
lives is not what it is) and pinned sha256s ([artifacts] `hub:<repo>/<path in repo>`) are checked on
local copies and downloads alike. sha256s and the commit a branch name resolved to, when the task does
not pin them yet, are written to `<task cache>/hub_pins.json` on first use so they can be pinned.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from harness.errors import HarnessError
from harness.task.spec import TaskSpec
from harness.testing.tiny import sha256_file

CODER_FILES = ("cfg.json", "sae.safetensors")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
_reachable: dict[str, bool] = {}


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now (huggingface_hub reads it at import)."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the Hub endpoint within `timeout` (behind a proxy: assumed reachable)."""
    endpoint = _endpoint()
    if endpoint not in _reachable:
        if any(os.environ.get(v) for v in _PROXY_VARS):
            _reachable[endpoint] = True
        else:
            u = urlparse(endpoint)
            port = u.port or (443 if u.scheme == "https" else 80)
            try:
                socket.create_connection((u.hostname or "", port), timeout=timeout).close()
                _reachable[endpoint] = True
            except OSError:
                _reachable[endpoint] = False
    return _reachable[endpoint]


def offline_hint(what: str) -> str:
    return (
        f"connect to the Hugging Face Hub, or pre-download {what} into HF_HOME "
        "(`hf download ...` on a connected machine, then copy HF_HOME over), "
        "or point the task at a local copy with --override (see the task README)"
    )


def short_revision(rev: str) -> str:
    return rev[:12] if len(rev) == 40 else (rev or "main")


def cached_file(repo: str, filename: str, revision: str, repo_type: str = "model") -> Path | None:
    """The file's path in the local Hugging Face cache at that revision, or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        p = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache_dir()), revision=revision or None,
                                   repo_type=repo_type)
    except Exception:  # malformed repo id or revision: treat as not cached, the download names the problem
        return None
    return Path(p) if isinstance(p, str) and Path(p).is_file() else None


def _model_cached(repo: str, revision: str) -> bool:
    return cached_file(repo, "config.json", revision) is not None and any(
        cached_file(repo, f, revision) is not None for f in _WEIGHT_FILES)


def _corpus_already_tokenized(spec: TaskSpec) -> bool:
    from harness.task.spec import cache_root

    d = cache_root() / "tasks" / f"{spec.id}-{spec.hash[:12]}"
    return (d / "splits.npz").is_file() or (d / "corpus_tokens.npy").is_file()


def missing_hub_inputs(spec: TaskSpec, simulator: bool = False) -> list[tuple[str, str]]:
    """(what is missing from the local cache, the override that replaces it) for each Hub input of the task."""
    out: list[tuple[str, str]] = []
    c = spec.coder
    if c.source == "hub" and not c.path:
        sub = c.subfolder or c.hookpoint
        if any(cached_file(c.repo, f"{sub}/{n}", c.revision) is None for n in CODER_FILES):
            out.append((f"coder {c.repo}@{short_revision(c.revision)} {sub}/{{{','.join(CODER_FILES)}}}",
                        "--override coder.path=DIR"))
    refs = [("subject", spec.subject)] + ([("simulator", spec.simulator.model)] if simulator else [])
    for name, m in refs:
        if m.get("source") == "hub" and not m.get("path") and not _model_cached(m["id"], m.get("revision", "")):
            out.append((f"{name} {m['id']}@{short_revision(m.get('revision', ''))}", f"--override {name}.path=DIR"))
    k = spec.corpus
    if k.source == "hub" and not k.path and not _corpus_already_tokenized(spec):
        if not (k.data_files and cached_file(k.dataset, k.data_files, k.revision, "dataset")):
            out.append((f"corpus {k.dataset}@{short_revision(k.revision)} {k.data_files or k.split}",
                        "--override corpus.path=FILE"))
    return out


def require_hub_inputs(spec: TaskSpec, simulator: bool = False) -> None:
    """Stop at once, in one line, when something the task needs is neither cached nor downloadable.

    `fetch_coder_folder` calls it when the coder is not cached; `prepare` / `eval` may call it first thing
    (eval with simulator=True) so that a cached coder with a missing subject also fails in one line.
    """
    missing = missing_hub_inputs(spec, simulator)
    if not missing:
        return
    if hub_offline():
        reason = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        reason = f"the Hugging Face Hub ({_endpoint()}) cannot be reached"
    else:
        return  # online: they will be downloaded
    readme = spec.folder / "README.md"
    where = f"the commands in {readme}" if readme.is_file() else "`hf download REPO --revision REV`"
    raise HarnessError(
        f"task {spec.id}: {reason} and the local Hugging Face cache ({hf_cache_dir()}) lacks "
        + "; ".join(w for w, _ in missing)
        + f". Pre-download them into HF_HOME on a connected machine ({where}), or point the task at local "
        "copies: " + " ".join(f for _, f in missing)
    )


def _check_and_record(spec: TaskSpec, folder: Path, sub: str, resolved: str = "") -> None:
    """Refuse files whose sha256 differs from the task's pin; record the sha256s it does not pin yet."""
    c = spec.coder
    new: dict[str, str] = {}
    for name in CODER_FILES:
        key = f"hub:{c.repo}/{sub}/{name}"
        got = sha256_file(folder / name)
        want = spec.artifacts.get(key)
        if want and got != want:
            raise HarnessError(
                f"{key}: sha256 of {folder / name} is {got[:16]}…, the task pins {want[:16]}…; this is not the "
                "pinned file — delete it from the cache (or fix --override coder.path) and download it again"
            )
        if not want:
            new[key] = got
    if resolved and resolved != c.revision:
        new[f"revision:{c.repo}@{c.revision}"] = resolved
    if not new:
        return
    from harness.task.spec import task_cache_dir

    path = task_cache_dir(spec) / "hub_pins.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if all(old.get(key) == v for key, v in new.items()):
        return
    path.write_text(json.dumps({**old, **new}, indent=1, sort_keys=True) + "\n")
    sys.stderr.write(f"note: {spec.id}: recorded sha256s (and resolved commits) the task does not pin yet in {path}; "
                     "copy them into the task's [artifacts] / revision to pin them\n")


def fetch_coder_folder(spec: TaskSpec) -> Path:
    """Local folder holding the coder's cfg.json + sae.safetensors (downloaded once for hub coders)."""
    c = spec.coder
    sub = c.subfolder or c.hookpoint
    if c.source == "local" or c.path:
        folder = spec.resolve(c.path)
        if not folder.is_dir():
            flag = "coder.path" if c.source == "hub" else "[coder] path"
            raise HarnessError(f"{spec.toml_path} [coder]: coder folder {folder} does not exist; fix {flag} "
                               f"(a folder holding {' + '.join(CODER_FILES)})")
        if c.source == "hub":
            for name in CODER_FILES:
                if not (folder / name).is_file():
                    raise HarnessError(f"{folder / name} is missing: --override coder.path must name a copy of "
                                       f"{c.repo}/{sub}/ holding {' + '.join(CODER_FILES)}")
            _check_and_record(spec, folder, sub)
        return folder
    if any(cached_file(c.repo, f"{sub}/{n}", c.revision) is None for n in CODER_FILES):
        # About to need the network: offline, fail now and name everything else that is missing too.
        # (Only then: `harness validate` needs the coder's cfg.json, not the subject or the corpus.)
        require_hub_inputs(spec)
    from huggingface_hub import snapshot_download

    patterns = [f"{sub}/{n}" for n in CODER_FILES]
    cache = str(hf_cache_dir())
    try:
        # Local first: an offline machine with a filled HF_HOME must not wait on the network.
        root = snapshot_download(c.repo, revision=c.revision or None, allow_patterns=patterns,
                                 local_files_only=True, cache_dir=cache)
        if not all((Path(root) / p).is_file() for p in patterns):
            raise FileNotFoundError(sub)
    except Exception:
        if hub_offline() or not hub_reachable():
            raise HarnessError(
                f"coder {c.repo}@{short_revision(c.revision)} {sub}/ is not complete in the local cache ({cache}) and the Hub "
                f"cannot be reached; " + offline_hint("it") + f", e.g. --override coder.path=/path/to/{sub}"
            ) from None
        try:
            root = snapshot_download(c.repo, revision=c.revision or None, allow_patterns=patterns,
                                     etag_timeout=10, cache_dir=cache)
        except Exception as e:
            raise HarnessError(
                f"cannot download coder {c.repo}@{short_revision(c.revision)} {sub}/ ({type(e).__name__}); " + offline_hint("it")
            ) from None
    folder = Path(root) / sub
    for name in CODER_FILES:
        if not (folder / name).is_file():
            raise HarnessError(f"coder {c.repo}@{short_revision(c.revision)} has no {sub}/{name}: check [coder] subfolder "
                               "(sparsify keeps one folder per hookpoint)")
    _check_and_record(spec, folder, sub, resolved=Path(root).name)
    return folder
