"""SparseCoder against sparsify itself, on tiny random checkpoints written in sparsify's format."""

import json
import os

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # its Triton decoder fails on CPU machines

import pytest
import torch

from harness.model.coder import SparseCoder, topk_dense
from harness.errors import HarnessError
from harness.testing.tiny import build_coder_tensors, save_sparsify_coder

sparsify = pytest.importorskip("sparsify")

D, L, K = 16, 64, 6

# (name, transcode key in cfg.json, skip connection): the legacy one has no "transcode" key at all.
VARIANTS = [
    ("transcoder", True, True),
    ("sae", False, False),
    ("legacy_transcoder", None, True),
    ("legacy_sae", None, False),
]


def _write(folder, transcode, skip, seed=0, b_dec_scale=1.0):
    tensors = build_coder_tensors(D, L, skip, seed)
    # A visible b_dec makes "subtract it before encoding or not" change which latents fire.
    tensors["b_dec"] = tensors["b_dec"] * b_dec_scale
    save_sparsify_coder(folder, tensors, d_in=D, num_latents=L, k=K, transcode=transcode, skip=skip)
    return tensors


@pytest.fixture(params=VARIANTS, ids=[v[0] for v in VARIANTS])
def variant(request, tmp_path):
    name, transcode, skip = request.param
    folder = tmp_path / name
    _write(folder, transcode, skip, b_dec_scale=30.0)
    return name, transcode, skip, folder


def _x(n=48, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_matches_sparsify(variant):
    name, transcode, skip, folder = variant
    ours = SparseCoder.load(folder)
    theirs = sparsify.SparseCoder.load_from_disk(folder)
    x = _x()

    assert ours.subtract_b_dec == (not transcode)
    assert ours.kind == ("transcoder" if (transcode or skip) else "sae")
    assert (ours.num_latents, ours.d_in, ours.k) == (L, D, K)

    vals, idx = ours.encode(x)
    with torch.no_grad():
        ref = theirs.encode(x)
    assert vals.shape == idx.shape == (x.shape[0], K)
    for r in range(x.shape[0]):
        assert set(idx[r].tolist()) == set(ref.top_indices[r].tolist())
        ours_row = dict(zip(idx[r].tolist(), vals[r].tolist()))
        ref_row = dict(zip(ref.top_indices[r].tolist(), ref.top_acts[r].tolist()))
        for j, v in ref_row.items():
            assert ours_row[j] == pytest.approx(v, abs=1e-6)

    with torch.no_grad():
        out = theirs(x).sae_out  # forward adds the skip term; decode() alone would not
    mine = ours.decode_dense(ours.dense(vals, idx), x)
    torch.testing.assert_close(mine, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.reconstruct(x), out, atol=1e-5, rtol=0)


def test_legacy_subtracts_b_dec_even_with_skip(tmp_path):
    # Same tensors, only the cfg's transcode key differs: legacy must encode like transcode=False.
    _write(tmp_path / "legacy", None, True, b_dec_scale=30.0)
    _write(tmp_path / "new", True, True, b_dec_scale=30.0)
    _write(tmp_path / "old_style_false", False, True, b_dec_scale=30.0)
    legacy, new, false = (SparseCoder.load(tmp_path / n) for n in ("legacy", "new", "old_style_false"))
    assert legacy.kind == new.kind == "transcoder"
    assert legacy.subtract_b_dec and false.subtract_b_dec and not new.subtract_b_dec
    x = _x()
    torch.testing.assert_close(legacy.pre_acts(x), false.pre_acts(x), atol=0, rtol=0)
    assert not torch.allclose(legacy.pre_acts(x), new.pre_acts(x))


def test_encode_keeps_exact_zeros(tmp_path):
    tensors = build_coder_tensors(D, L, False, 0)
    tensors["encoder.bias"] = torch.full((L,), -1e3)
    tensors["encoder.bias"][:2] = 5.0  # only two latents can be positive
    save_sparsify_coder(tmp_path / "c", tensors, d_in=D, num_latents=L, k=K, transcode=True, skip=False)
    coder = SparseCoder.load(tmp_path / "c")
    vals, idx = coder.encode(_x(8))
    assert vals.shape == (8, K)
    assert ((vals == 0).sum(dim=1) >= K - 2).all()
    assert (vals >= 0).all()
    z = coder.dense(vals, idx)
    assert z.shape == (8, L) and (z[:, 2:] == 0).all()


def test_kind_override_and_conflict(tmp_path):
    _write(tmp_path / "st", True, True)
    _write(tmp_path / "plain", None, False)
    assert SparseCoder.load(tmp_path / "st", kind="transcoder").kind == "transcoder"
    with pytest.raises(HarnessError, match="W_skip"):
        SparseCoder.load(tmp_path / "st", kind="sae")
    # a legacy transcoder without skip looks like an SAE on disk: the caller's word decides
    assert SparseCoder.load(tmp_path / "plain").kind == "sae"
    assert SparseCoder.load(tmp_path / "plain", kind="transcoder").kind == "transcoder"
    with pytest.raises(HarnessError, match="kind"):
        SparseCoder.load(tmp_path / "plain", kind="autoencoder")


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(HarnessError, match="nope"):
        SparseCoder.load(missing)

    _write(tmp_path / "a", True, False)
    (tmp_path / "a" / "sae.safetensors").unlink()
    with pytest.raises(HarnessError, match="sae.safetensors"):
        SparseCoder.load(tmp_path / "a")

    _write(tmp_path / "g", True, False)
    cfg = json.loads((tmp_path / "g" / "cfg.json").read_text())
    cfg["activation"] = "groupmax"
    (tmp_path / "g" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(HarnessError, match="groupmax"):
        SparseCoder.load(tmp_path / "g")

    _write(tmp_path / "s", True, False)
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["num_latents"] = L * 2
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(HarnessError, match="shape"):
        SparseCoder.load(tmp_path / "s")

    _write(tmp_path / "w", True, True)
    cfg = json.loads((tmp_path / "w" / "cfg.json").read_text())
    cfg["skip_connection"] = False
    (tmp_path / "w" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(HarnessError, match="W_skip"):
        SparseCoder.load(tmp_path / "w")


def test_loads_bf16_as_float32(tmp_path):
    from safetensors.torch import save_file

    tensors = _write(tmp_path / "b", True, True)
    save_file({n: t.to(torch.bfloat16) for n, t in tensors.items()}, str(tmp_path / "b" / "sae.safetensors"))
    coder = SparseCoder.load(tmp_path / "b")
    assert all(t.dtype == torch.float32 for t in (coder.W_enc, coder.b_enc, coder.W_dec, coder.b_dec, coder.W_skip))


@pytest.mark.parametrize("transcode,skip", [(True, True), (None, True), (False, False)])
def test_save_round_trip(tmp_path, transcode, skip):
    _write(tmp_path / "src", transcode, skip, b_dec_scale=30.0)
    a = SparseCoder.load(tmp_path / "src")
    a.save(tmp_path / "dst")
    b = SparseCoder.load(tmp_path / "dst")
    assert (b.kind, b.subtract_b_dec, b.k) == (a.kind, a.subtract_b_dec, a.k)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert (ta is None) == (tb is None)
        if ta is not None:
            assert torch.equal(ta, tb)
    # sparsify reads what we write and encodes the same way
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "dst")
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).sae_out, a.reconstruct(x), atol=1e-5, rtol=0)


def test_topk_dense():
    z = torch.tensor([[0.1, 3.0, 2.0, 0.0, 5.0], [1.0, 0.0, 0.0, 0.0, 0.5]])
    out = topk_dense(z, 2)
    assert torch.equal(out, torch.tensor([[0.0, 3.0, 0.0, 0.0, 5.0], [1.0, 0.0, 0.0, 0.0, 0.5]]))
    assert torch.equal(topk_dense(z, 5), z)
    r = torch.rand(20, 50, generator=torch.Generator().manual_seed(0))
    out = topk_dense(r, 7)
    assert ((out != 0).sum(dim=1) == 7).all()
    kth = r.sort(dim=1, descending=True).values[:, 6:7]
    assert torch.equal(out != 0, r >= kth)
