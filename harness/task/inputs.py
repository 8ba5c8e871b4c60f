"""A task's inputs, each resolved, checked and loaded once: subject model, coder, pinned artifacts.

Hub inputs are first looked for in the local Hugging Face cache. When something is missing and the Hub
cannot be reached (HF_HUB_OFFLINE=1, or a 3-second connection probe fails), `require_hub_inputs` stops at
once with one line listing everything missing and how to provide it.

A `path` next to a hub source (`--override coder.path=DIR`, `subject.path=DIR`, `corpus.path=FILE`)
replaces the download by a local copy of the same files; the task hash does not change (where a file
lives is not what it is) and pinned sha256s ([artifacts] `hub:<repo>/<path in repo>`) are checked on
local copies and downloads alike. sha256s and the commit a branch name resolved to, when the task does
not pin them yet, are written to `<task cache>/hub_pins.json` on first use so they can be pinned.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError
from harness.hub import (
    cached_file,
    hf_cache_dir,
    hub_endpoint,
    hub_offline,
    hub_reachable,
    model_cached,
    offline_hint,
    short_revision,
)
from harness.io import cache_root, sha256_file
from harness.model.coder import SparseCoder, read_cfg
from harness.task.spec import TaskSpec, task_cache_dir, task_cache_path

CODER_FILES = ("cfg.json", "sae.safetensors")                 # sparsify
SAELENS_FILES = ("cfg.json", "sae_weights.safetensors")       # SAELens
FORMATS = (CODER_FILES, SAELENS_FILES)


def _complete(have) -> tuple[str, ...] | None:
    """The files of whichever format `have(name)` finds complete, or None."""
    return next((f for f in FORMATS if all(have(n) for n in f)), None)


class TaskInputs:
    """The task's inputs for one command: checked once, each model loaded at most once, when first needed.

    `prepare`, `evaluate` and `explain` share one instance, so the coder is read once and the subject model
    loaded once however many stages need them.
    """

    def __init__(self, spec: TaskSpec, device: str | torch.device = "cpu"):
        from harness.model.load import pick_device

        self.spec = spec
        self.device = pick_device(device)
        self._checked: set[bool] = set()
        self._coder_folder: Path | None = None
        self._coder: SparseCoder | None = None
        self._subject: tuple[Any, Any] | None = None

    def check(self, simulator: bool = False) -> None:
        """Offline with missing inputs: one line now, not a traceback later; pinned artifacts verified."""
        if simulator in self._checked:
            return
        require_hub_inputs(self.spec, simulator)
        if not self._checked:
            verify_artifacts(self.spec)
        self._checked.add(simulator)

    def coder_folder(self) -> Path:
        if self._coder_folder is None:
            self._coder_folder = fetch_coder_folder(self.spec)
        return self._coder_folder

    def num_latents(self) -> int:
        """The coder's width without loading its weights: declared in the spec, else read from its cfg.json."""
        if self.spec.coder.num_latents:
            return self.spec.coder.num_latents
        if self._coder is not None:
            return self._coder.num_latents
        return read_cfg(self.coder_folder())[1]

    def coder(self) -> SparseCoder:
        if self._coder is None:
            self._coder = load_coder(self.spec, self.coder_folder())
        return self._coder

    def subject(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the subject."""
        if self._subject is None:
            self._subject = load_subject(self.spec, self.device)
        return self._subject


def load_subject(spec: TaskSpec, device: str | torch.device):
    from harness.model.load import load_model

    return load_model(spec.subject_ref(), spec.folder, cache_root(), device=device)


def load_coder(spec: TaskSpec, folder: Path | None = None) -> SparseCoder:
    coder = SparseCoder.load(folder or fetch_coder_folder(spec), kind=spec.coder.kind, k=spec.coder.k)
    for name, declared, actual in (("num_latents", spec.coder.num_latents, coder.num_latents),
                                   ("k", spec.coder.k, coder.k)):
        if declared and declared != actual:
            raise HarnessError(f"{spec.toml_path} [coder]: declares {name} = {declared} but the checkpoint has "
                               f"{actual}; wrong coder folder or hookpoint")
    return coder


def _corpus_already_tokenized(spec: TaskSpec) -> bool:
    d = task_cache_path(spec)
    return (d / "splits.npz").is_file() or (d / "corpus_tokens.npy").is_file()


def missing_hub_inputs(spec: TaskSpec, simulator: bool = False) -> list[tuple[str, str]]:
    """(what is missing from the local cache, the override that replaces it) for each Hub input of the task."""
    out: list[tuple[str, str]] = []
    c = spec.coder
    if c.source == "hub" and not c.path:
        sub = c.subfolder or c.hookpoint
        if _complete(lambda n: cached_file(c.repo, f"{sub}/{n}", c.revision) is not None) is None:
            out.append((f"coder {c.repo}@{short_revision(c.revision)} {sub}/{{{','.join(CODER_FILES)}}} or "
                        f"{{{','.join(SAELENS_FILES)}}}",
                        "--override coder.path=DIR"))
    refs = [("subject", spec.subject)] + ([("simulator", spec.simulator.model)] if simulator else [])
    for name, m in refs:
        if m.get("source") == "hub" and not m.get("path") and not model_cached(m["id"], m.get("revision", "")):
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
        reason = f"the Hugging Face Hub ({hub_endpoint()}) cannot be reached"
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
    for name in _complete(lambda n: (folder / n).is_file()) or CODER_FILES:
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
            if _complete(lambda n: (folder / n).is_file()) is None:
                gone = next(n for n in CODER_FILES if not (folder / n).is_file())
                raise HarnessError(f"{folder / gone} is missing: --override coder.path must name a copy of "
                                   f"{c.repo}/{sub}/ holding {' + '.join(CODER_FILES)} (sparsify) or "
                                   f"{' + '.join(SAELENS_FILES)} (SAELens)")
            _check_and_record(spec, folder, sub)
        return folder
    if _complete(lambda n: cached_file(c.repo, f"{sub}/{n}", c.revision) is not None) is None:
        # About to need the network: offline, fail now and name everything else that is missing too.
        # (Only then: `harness validate` needs the coder's cfg.json, not the subject or the corpus.)
        require_hub_inputs(spec)
    from huggingface_hub import snapshot_download

    patterns = [f"{sub}/{n}" for n in dict.fromkeys(CODER_FILES + SAELENS_FILES)]
    cache = str(hf_cache_dir())
    try:
        # Local first: an offline machine with a filled HF_HOME must not wait on the network.
        root = snapshot_download(c.repo, revision=c.revision or None, allow_patterns=patterns,
                                 local_files_only=True, cache_dir=cache)
        if _complete(lambda n: (Path(root) / sub / n).is_file()) is None:
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
    if _complete(lambda n: (folder / n).is_file()) is None:
        raise HarnessError(f"coder {c.repo}@{short_revision(c.revision)} has no {sub}/ holding "
                           f"{' + '.join(CODER_FILES)} or {' + '.join(SAELENS_FILES)}: check [coder] subfolder "
                           "(sparsify keeps one folder per hookpoint, SAELens one per SAE id)")
    _check_and_record(spec, folder, sub, resolved=Path(root).name)
    return folder


def verify_artifacts(spec: TaskSpec) -> None:
    """Check the sha256 of every pinned local artifact; a mismatch is fatal (numbers would not be the task's)."""
    for rel, want in spec.artifacts.items():
        path = spec.resolve(rel)
        if not path.is_file():
            if rel.startswith(("hub:", "hf:")):
                continue
            raise HarnessError(f"{spec.toml_path} [artifacts]: {rel} is missing at {path}; rebuild or restore it")
        got = sha256_file(path)
        if got != want:
            raise HarnessError(
                f"{spec.toml_path} [artifacts]: sha256 of {rel} is {got[:16]}…, the task pins {want[:16]}…; "
                "the file was modified — restore it (git checkout) or rebuild the task"
            )
