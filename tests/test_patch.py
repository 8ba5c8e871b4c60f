"""Last-position patching and model loading, on tiny random GPT-NeoX (parallel residual) and Llama models."""

import time
from pathlib import Path

import pytest
import torch

from harness.testing import tiny
from harness.model.coder import SparseCoder
from harness.errors import HarnessError
from harness.model.load import ModelRef, load_model, pick_device
from harness.model.patch import (
    Patcher, ce_with_patch_full, last_position_full, logits_with_patch_full, resolve_hookpoint,
)

B, T = 3, 12
HOOKS = [("layers.0.mlp", "transcoder"), ("layers.1.mlp", "transcoder"), ("layers.0", "sae"), ("layers.1", "sae")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = tiny.build_tokenizer(tiny.synthetic_texts(40, 0))
    for arch in ("gpt_neox", "llama"):
        model = tiny.build_model(arch, len(tok), seed=0)
        model.save_pretrained(root / arch)
        tok.save_pretrained(root / arch)
    return root


@pytest.fixture(scope="module", params=["gpt_neox", "llama"])
def loaded(request, workdir):
    model, tok = load_model(ModelRef(source="local", path=request.param), base_dir=workdir, cache_dir=workdir)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tok), (B, T), generator=g)
    targets = torch.randint(0, len(tok), (B,), generator=g)
    return model, ids, targets


def _rand(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ capture


@pytest.mark.parametrize("hookpoint", ["layers.0.mlp", "layers.1.mlp"])
def test_transcoder_capture_is_mlp_input_and_output(loaded, hookpoint):
    model, ids, targets = loaded
    mlp = resolve_hookpoint(model, hookpoint)
    with Patcher(model, hookpoint, "transcoder").prefix(ids) as h:
        fast = h.capture(targets)
    full = last_position_full(model, hookpoint, "transcoder", ids, targets)
    with torch.inference_mode():
        y_direct = mlp(fast.x[:, None, :])[:, 0, :]
    torch.testing.assert_close(fast.y, y_direct, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.x, full.x, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.y, full.y, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.ce_clean, full.ce_clean, atol=1e-5, rtol=0)
    assert fast.x.shape == fast.y.shape == (B, model.config.hidden_size)
    assert fast.ce_clean.dtype == torch.float64 and fast.ce_clean.shape == (B,)


def test_sae_capture_is_residual_stream(loaded):
    model, ids, targets = loaded
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True)
    # hidden_states[1] is layer 0's output (only the last entry carries the final norm)
    resid = out.hidden_states[1][:, -1, :]
    with Patcher(model, "layers.0", "sae").prefix(ids) as h:
        fast = h.capture(targets)
    torch.testing.assert_close(fast.x, resid, atol=1e-5, rtol=0)
    assert torch.equal(fast.x, fast.y)
    ce_ref = -out.logits[:, -1].double().log_softmax(-1)[torch.arange(B), targets]
    torch.testing.assert_close(fast.ce_clean, ce_ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ replacement


@pytest.mark.parametrize("hookpoint,kind", HOOKS)
def test_identity_patch_reproduces_clean(loaded, hookpoint, kind):
    model, ids, targets = loaded
    with Patcher(model, hookpoint, kind).prefix(ids) as h:
        lp = h.capture(targets)
        fast = h.ce(lp.y, targets)
    full = ce_with_patch_full(model, hookpoint, kind, ids, targets, lp.y)
    torch.testing.assert_close(fast, lp.ce_clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(full, lp.ce_clean, atol=1e-5, rtol=0)


def test_exact_sae_gives_clean_ce(loaded, tmp_path):
    model, ids, targets = loaded
    d = model.config.hidden_size
    eye = torch.eye(d)
    both = torch.cat([eye, -eye]).contiguous()
    # relu(x) - relu(-x) = x: with k = 2d nothing is dropped; transcode=True so b_dec is not subtracted
    tensors = {"encoder.weight": both, "encoder.bias": torch.zeros(2 * d), "W_dec": both.clone(),
               "b_dec": torch.zeros(d)}
    tiny.save_sparsify_coder(tmp_path / "exact", tensors, d_in=d, num_latents=2 * d, k=2 * d,
                             transcode=True, skip=False)
    coder = SparseCoder.load(tmp_path / "exact", kind="sae")
    with Patcher(model, "layers.0", "sae").prefix(ids) as h:
        lp = h.capture(targets)
        recon = coder.reconstruct(lp.x)
        torch.testing.assert_close(recon, lp.x, atol=1e-5, rtol=0)
        torch.testing.assert_close(h.ce(recon, targets), lp.ce_clean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hookpoint,kind", HOOKS)
def test_earlier_positions_untouched(loaded, hookpoint, kind):
    model, ids, _ = loaded
    rep = 5 * _rand((B, model.config.hidden_size), 1)
    clean = logits_with_patch_full(model, hookpoint, kind, ids, None)
    patched = logits_with_patch_full(model, hookpoint, kind, ids, rep)
    assert torch.equal(clean[:, :-1], patched[:, :-1])
    assert not torch.allclose(clean[:, -1], patched[:, -1])


@pytest.mark.parametrize("hookpoint,kind", HOOKS)
def test_fast_path_matches_full_and_restores_cache(loaded, hookpoint, kind):
    model, ids, targets = loaded
    d = model.config.hidden_size
    reps = [3 * _rand((B, d), s) for s in range(3)] + [torch.zeros(B, d)]  # last one: zero_output
    with Patcher(model, hookpoint, kind).prefix(ids) as h:
        before = h.capture(targets)
        assert h.cache.get_seq_length() == T - 1
        for rep in reps:
            a = h.ce(rep, targets)
            b = h.ce(rep, targets)
            assert torch.equal(a, b)
            assert h.cache.get_seq_length() == T - 1
            full = ce_with_patch_full(model, hookpoint, kind, ids, targets, rep)
            torch.testing.assert_close(a, full, atol=1e-4, rtol=0)
        after = h.capture(targets)
        assert torch.equal(before.ce_clean, after.ce_clean) and torch.equal(before.x, after.x)
        torch.testing.assert_close(h.ce(None, targets), before.ce_clean, atol=0, rtol=0)
        batched = h.ce_batch(reps, targets)
        assert batched.shape == (len(reps), B)
        torch.testing.assert_close(batched, torch.stack([h.ce(r, targets) for r in reps]), atol=1e-6, rtol=0)
        one_by_one = h.ce_batch(reps, targets, max_rows=1)
        torch.testing.assert_close(one_by_one, batched, atol=1e-6, rtol=0)


def test_single_token_window(loaded):
    model, ids, targets = loaded
    rep = _rand((B, model.config.hidden_size), 2)
    with Patcher(model, "layers.1.mlp", "transcoder").prefix(ids[:, :1]) as h:
        fast = h.ce(rep, targets)
    torch.testing.assert_close(fast, ce_with_patch_full(model, "layers.1.mlp", "transcoder", ids[:, :1], targets, rep),
                               atol=1e-5, rtol=0)


def test_bad_hookpoint_and_kind(loaded):
    model, _, _ = loaded
    with pytest.raises(HarnessError, match=r"layers\.7\.mlp.*layers\.0"):
        resolve_hookpoint(model, "layers.7.mlp")
    with pytest.raises(HarnessError, match="mlpp"):
        Patcher(model, "layers.0.mlpp", "transcoder")
    with pytest.raises(HarnessError, match="kind"):
        Patcher(model, "layers.0", "crosscoder")


# ------------------------------------------------------------------ models


def test_hub_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = ModelRef(source="hub", id="harness-tests/no-such-model-xyz", revision="0123456789abcdef")
    t0 = time.monotonic()
    with pytest.raises(HarnessError) as err:
        load_model(ref, base_dir=tmp_path, cache_dir=tmp_path)
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert "harness-tests/no-such-model-xyz@0123456789abcdef" in msg and "\n" not in msg
    assert "HF_HOME" in msg and "subject.path=" in msg


def test_hub_unreachable_fails_fast_without_retries(monkeypatch, tmp_path):
    import harness.hub as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "unreachable_reason", lambda: "cannot reach the probe host")
    with pytest.raises(HarnessError, match=r"harness-tests/absent@main .*cannot reach the probe host"):
        load_model(ModelRef(source="hub", id="harness-tests/absent"), base_dir=tmp_path, cache_dir=tmp_path)


def test_local_missing_folder(tmp_path):
    with pytest.raises(HarnessError, match="missing-model"):
        load_model(ModelRef(source="local", path="missing-model"), base_dir=tmp_path, cache_dir=tmp_path)


def test_model_keys(workdir, tmp_path):
    assert ModelRef(source="hub", id="EleutherAI/pythia-160m", revision="50f5").key() == "hub:EleutherAI/pythia-160m@50f5"
    assert ModelRef(source="gguf-package", package="pkg", file="m.gguf").key() == "gguf:pkg/m.gguf"
    ref = ModelRef(source="local", path="llama")
    key = ref.key(workdir)
    assert key.startswith("local:llama#") and len(key.split("#")[1]) == 12
    assert ModelRef(source="local", path=str(workdir / "llama")).key() == key  # absolute path, same content
    import shutil
    shutil.copytree(workdir / "llama", tmp_path / "llama")
    assert ref.key(tmp_path) == key
    # from_dict with the task folder makes the path absolute, so key() works from any working directory
    anchored = ModelRef.from_dict({"source": "local", "path": "llama"}, "t [subject]", base_dir=workdir)
    assert Path(anchored.path).is_absolute() and anchored.key() == key
    # The key is the config's values, not its bytes: whitespace is the same model, another value is not.
    cfg_path = tmp_path / "llama" / "config.json"
    cfg_path.write_text(cfg_path.read_text() + " ")
    assert ref.key(tmp_path) == key
    import json
    cfg = json.loads(cfg_path.read_text())
    cfg["rms_norm_eps"] = cfg["rms_norm_eps"] * 2
    cfg_path.write_text(json.dumps(cfg))
    assert ref.key(tmp_path) != key


def test_model_ref_from_dict():
    where = "tasks/x/task.toml [subject]"
    ref = ModelRef.from_dict({"source": "hub", "id": "a/b", "revision": "abc"}, where)
    assert ref == ModelRef(source="hub", id="a/b", revision="abc")
    assert ModelRef.from_dict({"source": "local", "path": "model"}, where).path == "model"
    # a path next to a remote source is the local-copy override
    assert ModelRef.from_dict({"source": "hub", "id": "a/b", "path": "/m"}, where) == ModelRef(source="local", path="/m")
    sim = ModelRef.from_dict({"source": "local", "path": "s", "prompt_version": "v1"}, where, extra_keys=["prompt_version"])
    assert sim.path == "s"
    for bad, pattern in [({"source": "ftp"}, "source"), ({"source": "hub"}, "id"), ({"source": "local"}, "path"),
                         ({"source": "hub", "id": "a/b", "revison": "x"}, "revison"),
                         ({"source": "local", "path": 3}, "path"), ({"source": "local", "path": "m", "dtype": "f8"}, "dtype"),
                         ("hub", "table")]:
        with pytest.raises(HarnessError, match=pattern) as err:
            ModelRef.from_dict(bad, where)
        assert where in str(err.value)


def test_gguf_package_source_loads_converted_folder(workdir, monkeypatch):
    gguf_cache = pytest.importorskip("harness.model.gguf")
    monkeypatch.setattr(gguf_cache, "converted_folder", lambda package, file, cache_dir: workdir / "llama")
    model, tok = load_model(ModelRef(source="gguf-package", package="pkg", file="m.gguf"), workdir, workdir)
    assert model.config.model_type == "llama" and len(tok) > 0


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")
    with pytest.raises(HarnessError):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(HarnessError, match="cuda"):
            pick_device("cuda")
