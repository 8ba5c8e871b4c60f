"""The task builders (harness.build) on tiny inputs: corpus generation, activation hooks, the trainer."""

from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import pytest
import torch

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

from harness.testing import tiny  # noqa: E402
from harness.build import corpus as C  # noqa: E402
from harness.build import train_transcoder as TT  # noqa: E402
from harness.errors import HarnessError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_lm():
    texts = tiny.synthetic_texts(200, 0)
    tok = tiny.build_tokenizer(texts)
    model = tiny.build_model("llama", len(tok), 0, layers=3)
    return model, tok


CFG = C.CorpusConfig(samples_per_chunk=4, max_new_tokens=10, n_train_chunks=3, n_eval_chunks=1, seed=5)
STARTS = C.STARTS[:12]


def _build(model, tok, work, cfg=CFG, capture=1):
    C.generate_chunks(model, tok, work, cfg, starts=STARTS, capture_layer=capture, log=lambda m: None)
    return C.assemble_corpus(work, cfg, work / "corpus.npz")


def _tokens(path):
    with np.load(path) as z:
        return z["tokens"].copy(), int(z["eval_start"])


def test_chunk_order_interleaves_splits():
    cfg = C.CorpusConfig(n_train_chunks=110, n_eval_chunks=12)
    order = C.chunk_order(cfg)
    assert order[0] == ("eval", 0) and len(order) == 122 and len(set(order)) == 122
    first = order[:41]
    assert 3 <= sum(s == "eval" for s, _ in first) <= 5
    assert [i for s, i in order if s == "train"] == list(range(110))


def test_starts_are_many_and_distinct():
    assert len(C.STARTS) >= 150
    assert len(set(C.STARTS)) == len(C.STARTS)


def test_corpus_is_deterministic_and_resumable(tiny_lm, tmp_path):
    model, tok = tiny_lm
    s1 = _build(model, tok, tmp_path / "a")
    s2 = _build(model, tok, tmp_path / "b")
    assert s1["sha256"] == s2["sha256"]
    t1, e1 = _tokens(tmp_path / "a" / "corpus.npz")
    assert t1.dtype == np.uint16 and e1 == s1["eval_start"] == s1["train_tokens"]
    assert s1["complete"] and s1["train_chunks"] == 3
    # every sample ends with eos, and the training part is followed by the eval part
    assert int(t1[e1 - 1]) == tok.eos_token_id and int(t1[-1]) == tok.eos_token_id
    # delete one chunk (and its activations): the rerun regenerates it identically
    (tmp_path / "a" / "chunks" / "train-0001.npz").unlink()
    acts = C.acts_dir(tmp_path / "a", 1) / "train-0001.safetensors"
    before = acts.read_bytes()
    acts.unlink()
    s3 = _build(model, tok, tmp_path / "a")
    assert s3["sha256"] == s1["sha256"]
    assert acts.read_bytes() == before
    # another seed gives another corpus
    other = C.CorpusConfig(**{**CFG.__dict__, "seed": 6})
    s4 = _build(model, tok, tmp_path / "c", cfg=other)
    assert s4["sha256"] != s1["sha256"]


def test_work_folder_refuses_another_config(tiny_lm, tmp_path):
    model, tok = tiny_lm
    _build(model, tok, tmp_path)
    other = C.CorpusConfig(**{**CFG.__dict__, "temperature": 0.5})
    with pytest.raises(HarnessError, match="another corpus config"):
        C.generate_chunks(model, tok, tmp_path, other, starts=STARTS, log=lambda m: None)
    # more chunks of the same config: the corpus grows, the chunks already there are kept
    before = (tmp_path / "chunks" / "train-0002.npz").read_bytes()
    grown = C.CorpusConfig(**{**CFG.__dict__, "n_train_chunks": 4})
    present = C.generate_chunks(model, tok, tmp_path, grown, starts=STARTS, log=lambda m: None)
    assert ("train", 3) in present and (tmp_path / "chunks" / "train-0002.npz").read_bytes() == before
    assert json.loads((tmp_path / "config.json").read_text())["n_train_chunks"] == 4


def test_partial_corpus_and_missing_eval(tiny_lm, tmp_path):
    model, tok = tiny_lm
    # only the eval chunk and the first train chunk: a valid, smaller corpus
    C.generate_chunks(model, tok, tmp_path, CFG, starts=STARTS, only=[("eval", 0), ("train", 0)],
                      log=lambda m: None)
    s = C.assemble_corpus(tmp_path, CFG, tmp_path / "corpus.npz")
    assert s["train_chunks"] == 1 and not s["complete"]
    assert s["eval_chunks"] == 1 and s["tokens"] > s["eval_start"] > 0
    (tmp_path / "chunks" / "eval-0000.npz").unlink()
    with pytest.raises(HarnessError, match="eval-0000"):
        C.assemble_corpus(tmp_path, CFG, tmp_path / "corpus.npz")


def test_captured_activations_match_a_plain_forward(tiny_lm, tmp_path):
    """The (x, y) captured during batched, left-padded generation are those of each sample run alone."""
    model, tok = tiny_lm
    _build(model, tok, tmp_path, capture=1)
    from safetensors.torch import load_file

    with np.load(tmp_path / "chunks" / "train-0000.npz") as z:
        tokens, lengths = z["tokens"], z["lengths"]
    acts = load_file(str(C.acts_dir(tmp_path, 1) / "train-0000.safetensors"))
    first = torch.as_tensor(tokens[: lengths[0]].astype(np.int64))[None]
    x, y = TT.collect_mlp_activations(model, 1, first.numpy())
    # a sample's last token (the appended eos) is never fed to the model during generation
    assert len(acts["x"]) == int((lengths - 1).sum())
    n = lengths[0] - 1
    assert torch.allclose(acts["x"][:n].float(), x[:n], atol=3e-2, rtol=3e-2)
    assert torch.allclose(acts["y"][:n].float(), y[:n], atol=3e-2, rtol=3e-2)
    # and the second sample's rows follow
    second = tokens[lengths[0]: lengths[0] + lengths[1]].astype(np.int64)[None]
    x2, _ = TT.collect_mlp_activations(model, 1, second)
    assert torch.allclose(acts["x"][n:n + lengths[1] - 1].float(), x2[:-1], atol=3e-2, rtol=3e-2)


def test_collection_hook_shapes_and_truncation(tiny_lm):
    model, tok = tiny_lm
    windows = np.random.default_rng(0).integers(0, len(tok), size=(5, 7))
    x, y = TT.collect_mlp_activations(model, 1, windows, batch_size=2)
    d = model.config.hidden_size
    assert x.shape == (35, d) and y.shape == (35, d)
    # the hook's pair is the MLP's own input -> output
    mlp = model.model.layers[1].mlp
    with torch.no_grad():
        assert torch.allclose(mlp(x), y, atol=1e-5)
    # the truncated model gives the same activations
    import copy

    short = TT.truncate_layers(copy.deepcopy(model), 2)
    x2, y2 = TT.collect_mlp_activations(short, 1, windows, batch_size=5)
    assert len(short.model.layers) == 2
    assert torch.allclose(x, x2, atol=1e-5) and torch.allclose(y, y2, atol=1e-5)
    w = TT.corpus_windows(np.arange(100), 10, 95, 20)
    assert w.shape == (4, 20) and w[0, 0] == 10


def _synthetic(n, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    W = torch.randn(d, d, generator=g) / d ** 0.5
    feats = torch.relu(x @ torch.randn(d, 64, generator=g) - 1.0)
    y = x @ W + feats @ torch.randn(64, d, generator=g) * 0.5 + 0.3
    return x, y


def test_trainer_reduces_fvu_and_saves_a_sparsify_folder(tmp_path):
    from sparsify import SparseCoder

    x, y = _synthetic(8192)
    cfg = TT.TrainConfig(num_latents=128, k=8, batch_tokens=256, epochs=3, lr=1e-2, warmup_steps=5,
                         ckpt_every=16, dead_tokens=2000)
    before = TT.evaluate_reconstruction(TT.make_coder(32, cfg, b_dec=y.mean(0)), x, y)
    assert before["fvu"] == pytest.approx(1.0, abs=0.02)   # W_dec = W_skip = 0, b_dec = mean
    coder, stats = TT.train(x, y, cfg, ckpt_dir=tmp_path / "ckpt", log=lambda m: None)
    after = TT.evaluate_reconstruction(coder, x, y)
    assert after["fvu"] < 0.45 * before["fvu"]     # (the best linear map alone leaves 0.33)
    assert stats["steps"] == stats["total_steps"] == 96

    folder = tmp_path / "coder" / "layers.1.mlp"
    TT.save_coder(coder, folder)
    cfg_json = json.loads((folder / "cfg.json").read_text())
    assert cfg_json["transcode"] is True and cfg_json["skip_connection"] is True
    assert cfg_json["k"] == 8 and cfg_json["num_latents"] == 128 and cfg_json["d_in"] == 32
    loaded = SparseCoder.load_from_disk(folder)
    with torch.no_grad():
        a, b = coder.encode(x[:64]), loaded.encode(x[:64])
        assert torch.equal(a.top_indices, b.top_indices) and torch.allclose(a.top_acts, b.top_acts)
        assert torch.allclose(coder(x[:64]).sae_out, loaded(x[:64]).sae_out, atol=1e-6)
        # forward = decode + skip term
        manual = loaded.decode(b.top_acts, b.top_indices) + x[:64] @ loaded.W_skip.T
        assert torch.allclose(manual, loaded(x[:64]).sae_out, atol=1e-5)


def test_fold_scales_is_exact():
    x, y = _synthetic(256)
    cfg = TT.TrainConfig(num_latents=64, k=4)
    c = TT.make_coder(32, cfg)
    with torch.no_grad():
        for p in c.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    raw = TT.fold_scales(c, 2.5, 0.25)
    with torch.no_grad():
        assert torch.allclose(raw(x).sae_out, c(2.5 * x).sae_out / 0.25, atol=1e-4)
        assert torch.equal(raw.encode(x).top_indices, c.encode(2.5 * x).top_indices)


def test_trainer_resumes_from_checkpoint(tmp_path):
    x, y = _synthetic(4096, seed=1)
    cfg = TT.TrainConfig(num_latents=64, k=4, batch_tokens=256, epochs=2, lr=3e-3, warmup_steps=2,
                         ckpt_every=4)
    full, _ = TT.train(x, y, cfg, ckpt_dir=tmp_path / "full", log=lambda m: None)
    part, st = TT.train(x, y, cfg, ckpt_dir=tmp_path / "part", log=lambda m: None, stop_after=12)
    assert st["steps"] == 12
    resumed, st2 = TT.train(x, y, cfg, ckpt_dir=tmp_path / "part", log=lambda m: None)
    assert st2["steps"] == 32
    for k, v in full.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-6), k
    # a checkpoint of another run is refused
    with pytest.raises(ValueError, match="another run"):
        TT.train(x, y, TT.TrainConfig(**{**cfg.__dict__, "k": 5}), ckpt_dir=tmp_path / "part", log=lambda m: None)


def test_last_position_ce_conditions(tiny_lm):
    model, tok = tiny_lm
    cfg = TT.TrainConfig(num_latents=32, k=4)
    coder = TT.make_coder(model.config.hidden_size, cfg)
    ctx = np.random.default_rng(1).integers(0, len(tok), size=(6, 9))
    ce = TT.last_position_ce(model, 1, coder, ctx, batch_size=4)
    # clean equals a plain forward; coder with W_dec = W_skip = b_dec = 0 equals zero_output
    with torch.no_grad():
        logits = model(torch.as_tensor(ctx[:, :-1])).logits[:, -1]
    ref = -torch.log_softmax(logits, -1).gather(1, torch.as_tensor(ctx[:, -1:]))[:, 0].numpy()
    np.testing.assert_allclose(ce["clean"], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ce["coder"], ce["zero_output"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(ce["clean"], ce["zero_output"])


def test_training_activations_of_another_layer_are_collected_and_kept(tiny_lm, tmp_path):
    """A build for a layer other than the one captured during generation never reads that layer's files: it
    collects its own by a forward pass (windows over each chunk, bf16) and keeps them for a resumed run."""
    model, tok = tiny_lm
    _build(model, tok, tmp_path / "corpus", capture=1)   # the build's work folder keeps the corpus in corpus/
    calls = []

    def load_subject(n=None):
        calls.append(n)
        return copy.deepcopy(model), tok

    quiet = dict(log=lambda m: None, window=8)
    x0, y0 = TT.load_training_activations(tmp_path, CFG.n_train_chunks, 0, load_subject, **quiet)
    assert calls == [None]
    kept = sorted(p.name for p in C.acts_dir(tmp_path / "corpus", 0).iterdir())
    assert kept == [f"{C.chunk_name('train', i)}.safetensors" for i in range(CFG.n_train_chunks)]
    # the expected rows: layer 0's MLP input on the same windows, by the collection hook directly
    ref = copy.deepcopy(model).to(torch.bfloat16)
    want = []
    for i in range(CFG.n_train_chunks):
        toks = C.chunk_tokens(tmp_path / "corpus", "train", i)
        want.append(TT.collect_mlp_activations(ref, 0, TT.corpus_windows(toks, 0, len(toks), 8))[0])
    want = torch.cat(want)
    assert len(x0) > 0 and x0.shape == want.shape
    assert torch.allclose(x0.float(), want.float(), atol=1e-2, rtol=1e-2)
    # Layer 1's captured rows are another layer's: different values (and counts: capture covers every token)
    x1, _ = TT.load_training_activations(tmp_path, CFG.n_train_chunks, 1, load_subject, **quiet)
    assert calls == [None] and (len(x1) != len(x0) or not torch.allclose(x1.float(), x0.float()))
    # Resumed: layer 0 is read back, not collected again
    x0b, _ = TT.load_training_activations(tmp_path, CFG.n_train_chunks, 0, load_subject, **quiet)
    assert calls == [None] and torch.equal(x0b, x0)
