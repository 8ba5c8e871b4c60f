"""SAELens coders: the folders in tests/fixtures/saelens/ were written by sae-lens 6.54.12 itself
(`make_fixtures.py`, run in a venv holding it), each with sae-lens's own encode/decode outputs on fixed
inputs (`reference.npz`). The harness reads them without the package and must compute the same numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.model.coder import SparseCoder, read_cfg

FIXTURES = Path(__file__).parent / "fixtures" / "saelens"
READ = {  # fixture -> (activation, kind)
    "standard": ("relu", "sae"), "standard_from_training": ("relu", "sae"),
    "standard_expected_average_only_in": ("relu", "sae"), "topk": ("topk", "sae"),
    "topk_rescale_acts_by_decoder_norm": ("topk", "sae"), "jumprelu": ("jumprelu", "sae"),
    "transcoder": ("relu", "transcoder"), "skip_transcoder": ("relu", "transcoder"),
    "jumprelu_transcoder": ("jumprelu", "transcoder"), "legacy_v5_topk": ("topk", "sae"),
    "legacy_v5_jumprelu": ("jumprelu", "sae"),
}
REFUSED = {
    "gated": "gated SAEs",
    "standard_constant_norm_rescale": "normalize_activations = 'constant_norm_rescale'",
    "standard_layer_norm": "normalize_activations = 'layer_norm'",
    "jumprelu_skip_transcoder_dout12": "d_out = 12 differs from d_in = 8",
}


def test_every_fixture_is_either_read_or_refused():
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted([*READ, *REFUSED])


@pytest.mark.parametrize("name", sorted(READ))
def test_harness_computes_what_sae_lens_computed(name):
    ref = np.load(FIXTURES / name / "reference.npz")
    x = torch.from_numpy(ref["x"])
    # k: the latents stored per token, declared for a coder without TopK (a TopK one has its own)
    coder = SparseCoder.load(FIXTURES / name, k=0 if READ[name][0] == "topk" else 24)
    activation, kind = READ[name]
    assert (coder.activation, coder.kind, coder.num_latents, coder.d_in) == (activation, kind, 24, 8)
    z = coder.code(x)
    np.testing.assert_allclose(z.numpy(), ref["feature_acts"], rtol=1e-5, atol=1e-5)
    assert torch.equal(z > 0, torch.from_numpy(ref["feature_acts"] > 0))           # the same latents fire
    # sae(x): the decoder's output, with the skip path for skip transcoders
    np.testing.assert_allclose(coder.reconstruct(x).numpy(), ref["forward"], rtol=1e-5, atol=1e-5)
    # The re-sparsification rule keeps a code the coder itself produced unchanged.
    assert torch.equal(coder.resparsify(z), z)
    # read_cfg gives the width without reading weights
    assert read_cfg(FIXTURES / name)[1] == 24


def test_topk_stores_k_and_the_others_store_the_declared_cap():
    ref = np.load(FIXTURES / "jumprelu" / "reference.npz")
    acts = ref["feature_acts"]
    cap = int((acts > 0).sum(1).max())
    coder = SparseCoder.load(FIXTURES / "jumprelu", k=cap)
    v, i = coder.encode(torch.from_numpy(ref["x"]))
    assert v.shape == (20, cap)
    # every firing latent is among the stored ones when the cap is the largest count
    dense = np.zeros_like(acts)
    np.put_along_axis(dense, i.numpy(), v.numpy(), axis=1)
    np.testing.assert_allclose(dense, acts, rtol=1e-5, atol=1e-5)
    assert SparseCoder.load(FIXTURES / "topk").k == 3
    with pytest.raises(HarnessError, match="declares k = 5 but the TopK SAE has k = 3"):
        SparseCoder.load(FIXTURES / "topk", k=5)
    with pytest.raises(HarnessError, match=r"declare \[coder\] k"):
        SparseCoder.load(FIXTURES / "jumprelu")


def test_jumprelu_resparsify_zeroes_values_at_or_below_the_threshold():
    coder = SparseCoder.load(FIXTURES / "jumprelu", k=24)
    assert coder.threshold is not None
    th = coder.threshold
    z = torch.stack([th * 0.5, th, th * 1.5 + 1e-3, -th.abs() - 1])
    out = coder.resparsify(z)
    assert torch.equal(out[0], torch.zeros_like(th)) and torch.equal(out[1], torch.zeros_like(th))
    assert torch.equal(out[2], z[2]) and torch.equal(out[3], torch.zeros_like(th))
    relu = SparseCoder.load(FIXTURES / "standard", k=24)
    assert torch.equal(relu.resparsify(torch.tensor([[-1.0, 0.0, 2.0]])), torch.tensor([[0.0, 0.0, 2.0]]))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_the_harness_cannot_reproduce_is_refused_in_one_line(name):
    with pytest.raises(HarnessError) as e:
        SparseCoder.load(FIXTURES / name, k=24)
    assert REFUSED[name] in str(e.value) and "\n" not in str(e.value)


def test_damaged_folders_and_wrong_kind(tmp_path):
    src = FIXTURES / "skip_transcoder"
    with pytest.raises(HarnessError, match='a SAELens skip_transcoder is a transcoder, but the task says kind = "sae"'):
        SparseCoder.load(src, kind="sae", k=24)
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "standard", bad)
    cfg = json.loads((bad / "cfg.json").read_text())
    (bad / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 25}))
    with pytest.raises(HarnessError, match=r"has shape \(\d+, \d+\), cfg.json \(d_in=8, d_sae=25\) implies"):
        SparseCoder.load(bad, k=24)
    (bad / "cfg.json").write_text(json.dumps({**cfg, "architecture": "jumprelu"}))
    with pytest.raises(HarnessError, match="missing threshold"):
        SparseCoder.load(bad, k=24)
    (bad / "cfg.json").write_text(json.dumps({**cfg, "architecture": "mystery"}))
    with pytest.raises(HarnessError, match="architecture 'mystery' is not one the harness reads"):
        read_cfg(bad)
    (bad / "sae_weights.safetensors").write_bytes(b"not safetensors")
    (bad / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(HarnessError, match="cannot be read as safetensors"):
        SparseCoder.load(bad, k=24)
