"""The paper's task definitions (tasks/pythia160m-*, tasks/smollm2-*): their specs, their offline failure, and
the loading code for their exact formats, run end to end on stand-ins built here in the same formats.

Nothing is downloaded. The stand-ins: a random 7-layer GPT-NeoX with Pythia's parallel residual (so
`layers.6` and `layers.6.mlp` exist) and a 9-layer Llama (for SmolLM2's `layers.8.mlp`), saved with
save_pretrained; sparsify folders for a skip transcoder (`transcode: true`), a legacy skip transcoder and a
legacy residual SAE (no `transcode` key: b_dec is subtracted before encoding); corpora as .jsonl,
.jsonl.zst and .parquet, some placed in a fake Hugging Face cache under the pinned revisions, so the Hub
code path runs offline exactly as it would with a pre-filled HF_HOME.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import hub
from harness.task import inputs
from harness.errors import HarnessError
from harness.task.spec import list_tasks, load_task
from harness.testing.tiny import build_coder_tensors, build_model, build_tokenizer, save_sparsify_coder, synthetic_texts

REPO = Path(__file__).resolve().parent.parent
PAPER_TASKS = ["pythia160m-l6-transcoder", "pythia160m-l6-sae", "pythia160m-l6-transcoder-lite",
               "pythia160m-l6-sae-lite", "smollm2-135m-l8-skip-transcoder"]
HEX40 = re.compile(r"^[0-9a-f]{40}$")
PYTHIA = ("EleutherAI/pythia-160m", "50f5173d932e8e61f858120bcb800b97af589f46")
SMOLLM2 = ("HuggingFaceTB/SmolLM2-135M", "93efa2f097d58c2a74874c7e644dbc9b0cee75a2")
LLAMA3 = ("meta-llama/Meta-Llama-3-8B-Instruct", "8afb486c1db24fe5011ec46dfbe5b5dccdb575c2")
PILE = ("monology/pile-uncopyrighted", "3be90335b66f24456a5d6659d9c8d208c0357119", "train/00.jsonl.zst")
FINEWEB = ("HuggingFaceFW/fineweb-edu", "87f09149ef4734204d70ed1d046ddc9ca3f2b8f9", "sample/10BT/000_00000.parquet")
SAE_REPO = ("EleutherAI/sae-pythia-160m-32k", "2046768ae0c8cb69a2e8ed64f2eafb9f8c5fa294")
SST_REPO = "EleutherAI/Pythia-160m-SST-k32-32k"
SMOL_TC = ("EleutherAI/skip-transcoder-SmolLM2-135M-128x", "651f51421f2e1aa8fbd907e02ef421d3da55ff6d")

L, K, D = 96, 6, 64  # stand-in coders: latents, k, width
SMALL = ["contexts.calibration=8", "contexts.test=8", "contexts.activation_sample_tokens=800",
         "contexts.detection_positive=2", "contexts.detection_negative=2", "contexts.detection_pool=8",
         "scoring.n_quantiles=33", f"coder.num_latents={L}", f"coder.k={K}"]
FEW_FREQUENT = ['latents.rewritten={count = 4, rule = "most-frequent", seed = 0}']


def task_toml(tid: str) -> Path:
    return REPO / "tasks" / tid / "task.toml"


# ---------------------------------------------------------------- the specs themselves

def test_registry_lists_the_paper_tasks_with_distinct_hashes():
    specs = {s.id: s for s in list_tasks(REPO / "tasks")}
    for tid in PAPER_TASKS:
        assert tid in specs, f"{tid} is not registered"
        assert specs[tid].toml_path.parent.name == tid
    hashes = [specs[t].hash for t in PAPER_TASKS]
    assert len(set(hashes)) == len(hashes)


@pytest.mark.parametrize("tid", PAPER_TASKS)
def test_common_facts(tid):
    s = load_task(str(task_toml(tid)))
    assert s.contexts.T == 32 and s.contexts.min_position == 16
    assert (s.simulator.model["id"], s.simulator.model["revision"]) == LLAMA3
    assert s.simulator.model["source"] == "hub" and s.simulator.prompt_version == "v2"
    assert s.scoring.bootstrap >= 1000 and s.scoring.quantile_method == "inverted_cdf"
    assert s.subject["source"] == "hub" and s.coder.source == "hub" and s.corpus.source == "hub"
    if tid.endswith("-lite"):
        c = s.contexts
        assert (c.calibration, c.test, c.detection_positive, c.detection_negative) == (2000, 1000, 50, 50)
        assert (s.latents.rewritten, s.latents.count, s.latents.rule) == ("rule", 256, "most-frequent")
    else:
        c = s.contexts
        assert (c.activation_sample_tokens, c.calibration, c.test) == (10_000_000, 10_000, 10_000)
        assert (c.detection_positive, c.detection_negative) == (100, 100)
        assert s.latents.rewritten == "all"


@pytest.mark.parametrize("tid", [t for t in PAPER_TASKS if t.startswith("pythia")])
def test_pythia_facts(tid):
    s = load_task(str(task_toml(tid)))
    assert (s.subject["id"], s.subject["revision"]) == PYTHIA
    assert (s.corpus.dataset, s.corpus.revision, s.corpus.data_files) == PILE
    assert (s.coder.num_latents, s.coder.k) == (32768, 32)
    if "transcoder" in tid:
        assert (s.coder.kind, s.coder.hookpoint, s.coder.subfolder, s.coder.repo) == (
            "transcoder", "layers.6.mlp", "layers.6.mlp", SST_REPO)
    else:
        assert (s.coder.kind, s.coder.hookpoint, s.coder.subfolder) == ("sae", "layers.6", "layers.6")
        assert (s.coder.repo, s.coder.revision) == SAE_REPO


def test_smollm2_facts():
    s = load_task(str(task_toml("smollm2-135m-l8-skip-transcoder")))
    assert (s.subject["id"], s.subject["revision"]) == SMOLLM2
    assert (s.coder.repo, s.coder.revision) == SMOL_TC
    assert (s.coder.kind, s.coder.hookpoint, s.coder.subfolder) == ("transcoder", "layers.8.mlp", "model.layers.8.mlp")
    assert s.coder.num_latents == 576 * 128
    assert (s.corpus.dataset, s.corpus.revision, s.corpus.data_files) == FINEWEB
    key = f"hub:{SMOL_TC[0]}/model.layers.8.mlp/sae.safetensors"
    assert re.fullmatch(r"[0-9a-f]{64}", s.artifacts[key])


@pytest.mark.parametrize("tid", PAPER_TASKS)
def test_every_revision_is_a_commit_or_flagged_unpinned(tid):
    s = load_task(str(task_toml(tid)))
    readme = (task_toml(tid).parent / "README.md").read_text()
    for what, rev in (("subject", s.subject["revision"]), ("coder", s.coder.revision),
                      ("corpus", s.corpus.revision), ("simulator", s.simulator.model["revision"])):
        if not HEX40.match(rev):
            assert what == "coder" and s.coder.repo == SST_REPO, f"{tid}: {what} revision {rev!r} is not a commit"
            assert "UNPINNED" in readme and "UNPINNED" in task_toml(tid).read_text()


@pytest.mark.parametrize("tid", PAPER_TASKS)
def test_readme_covers_cost_time_and_reference_figures(tid):
    text = (task_toml(tid).parent / "README.md").read_text()
    s = load_task(str(task_toml(tid)))
    m = s.latents.count if s.latents.rewritten == "rule" else s.coder.num_latents
    c = s.contexts
    total = m * (c.calibration + c.test + c.detection_positive + c.detection_negative)
    assert f"{total:,}" in text, f"{tid}: README should state the prediction count {total:,}"
    for needle in ("GPU", "3.19", "zero", "HF_HOME", "--override", tid):
        assert needle in text, f"{tid}: README lacks {needle!r}"


# ---------------------------------------------------------------- offline: one clear line, at once

def _offline_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("tid", PAPER_TASKS)
def test_prepare_offline_names_everything_missing(tid, monkeypatch, tmp_path):
    from harness.data.prepare import prepare

    _offline_env(monkeypatch, tmp_path)
    spec = load_task(str(task_toml(tid)))
    with pytest.raises(HarnessError) as err:
        prepare(spec)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in (spec.coder.repo, spec.subject["id"], spec.corpus.dataset, "HF_HUB_OFFLINE", "HF_HOME",
                   "--override coder.path=", "--override subject.path=", "--override corpus.path=", "README.md"):
        assert needle in msg, f"offline message lacks {needle!r}: {msg}"


def test_prepare_fails_fast_when_the_hub_is_unreachable(monkeypatch, tmp_path):
    from harness.data.prepare import prepare

    _offline_env(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    for var in hub._PROXY_VARS:  # behind a proxy the probe is skipped (the Hub is assumed reachable)
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "_reachable", {})
    with pytest.raises(HarnessError) as err:
        prepare(load_task(str(task_toml("pythia160m-l6-sae"))))
    assert "cannot be reached" in str(err.value) or "HF_HUB_OFFLINE" in str(err.value)
    assert SAE_REPO[0] in str(err.value)


def test_cli_prepare_offline_prints_one_line_and_exits_nonzero(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HARNESS_CACHE": str(tmp_path / "c"),
           "HARNESS_TASKS_DIR": str(REPO / "tasks")}
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-m", "harness.cli", "prepare", "--task", "pythia160m-l6-transcoder"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert SST_REPO in lines[0] and "Traceback" not in r.stderr


# ---------------------------------------------------------------- stand-ins in the real formats

def _fake_hub_file(hf_home: Path, repo: str, revision: str, rel: str, repo_type: str = "model") -> Path:
    """Where huggingface_hub keeps `rel` of repo@revision (a commit) in a filled cache."""
    prefix = {"model": "models", "dataset": "datasets"}[repo_type]
    p = hf_home / "hub" / f"{prefix}--{repo.replace('/', '--')}" / "snapshots" / revision / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_standins")
    tok = build_tokenizer(synthetic_texts(200, 0))
    texts = synthetic_texts(400, 1)

    neox = build_model("gpt_neox", len(tok), 0, hidden=D, layers=7)
    neox.save_pretrained(root / "pythia")
    tok.save_pretrained(root / "pythia")
    llama = build_model("llama", len(tok), 1, hidden=D, layers=9)
    llama.save_pretrained(root / "smollm2")
    tok.save_pretrained(root / "smollm2")

    def coder(folder: Path, skip: bool, transcode, seed: int) -> Path:
        t = build_coder_tensors(D, L, skip, seed)
        save_sparsify_coder(folder, t, d_in=D, num_latents=L, k=K, transcode=transcode, skip=skip)
        return folder

    coder(root / "sst" / "layers.6.mlp", True, True, 10)               # current sparsify cfg
    coder(root / "sst-legacy" / "layers.6.mlp", True, None, 11)        # pre-f02711e skip transcoder
    coder(root / "sae" / "layers.6", False, None, 12)                  # legacy residual SAE

    hf = root / "hf_home"  # a filled HF cache at the tasks' pinned revisions
    for name in ("cfg.json", "sae.safetensors"):
        src = coder(root / "sae-hub" / "layers.6", False, None, 12) / name
        _fake_hub_file(hf, *SAE_REPO, f"layers.6/{name}").write_bytes(src.read_bytes())
        src = coder(root / "smol" / "model.layers.8.mlp", True, True, 13) / name
        _fake_hub_file(hf, *SMOL_TC, f"model.layers.8.mlp/{name}").write_bytes(src.read_bytes())

    with open(root / "pile.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t, "meta": {"pile_set_name": "synthetic"}}) + "\n")
    import zstandard

    zst = zstandard.ZstdCompressor().compress((root / "pile.jsonl").read_bytes())
    (root / "pile.jsonl.zst").write_bytes(zst)
    _fake_hub_file(hf, PILE[0], PILE[1], PILE[2], "dataset").write_bytes(zst)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), root / "fineweb.parquet",
                       row_group_size=64)
        _fake_hub_file(hf, FINEWEB[0], FINEWEB[1], FINEWEB[2], "dataset").write_bytes(
            (root / "fineweb.parquet").read_bytes())
    except ImportError:
        pass
    return root


@pytest.fixture
def cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setattr(hub, "_reachable", {})
    return tmp_path


def _block_input_and_output(model, layer: int, ids: torch.Tensor):
    """Block `layer`'s input and output, read with plain hooks (independent of harness.model.patch)."""
    blocks = model.base_model.layers
    got = {}

    def pre(mod, args, kwargs):
        got["in"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    def post(mod, args, output):
        got["out"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    h1 = blocks[layer].register_forward_pre_hook(pre, with_kwargs=True)
    h2 = blocks[layer].register_forward_hook(post)
    try:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    finally:
        h1.remove(), h2.remove()
    return got["in"], got["out"]


def _reference_encode(folder: Path, x: torch.Tensor):
    """sparsify's encoding written out from the files: ReLU(W (x - b_dec if legacy) + b), then top-k."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "cfg.json").read_text())
    t = load_file(str(folder / "sae.safetensors"))
    xin = x if cfg.get("transcode", False) else x - t["b_dec"]
    pre = torch.relu(xin @ t["encoder.weight"].T + t["encoder.bias"])
    v, i = pre.topk(cfg["k"], dim=-1)
    z = torch.zeros_like(pre).scatter(-1, i, v)
    out = z @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        out = out + x @ t["W_skip"].T
    return z, out


def _ce_with_last_replaced(model, module, ids, targets, replacement):
    def post(mod, args, output):
        out = output[0] if isinstance(output, tuple) else output
        new = torch.cat([out[:, :-1], replacement[:, None, :].to(out.dtype)], dim=1)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    h = module.register_forward_hook(post)
    try:
        with torch.inference_mode():
            logits = model(input_ids=ids, use_cache=False).logits[:, -1].double()
    finally:
        h.remove()
    return -logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def _check_against_reference(prep, coder_folder: Path, layer: int):
    """True latents and coder/zero CE of the test split, recomputed from the files with plain hooks."""
    from harness.task.inputs import TaskInputs

    model, kind = TaskInputs(prep.spec).subject()[0], prep.spec.coder.kind
    windows = torch.from_numpy(prep.splits["test"])
    ids, targets = windows[:, :-1], windows[:, -1]
    block_in, block_out = _block_input_and_output(model, layer, ids)
    blk = model.base_model.layers[layer]
    if kind == "transcoder":
        # Both GPT-NeoX (parallel residual) and Llama feed the MLP post_attention_layernorm of a stream; for
        # GPT-NeoX it is the block input, not the attention output.
        if model.config.model_type == "gpt_neox":
            assert model.config.use_parallel_residual
            with torch.inference_mode():
                x = blk.post_attention_layernorm(block_in)[:, -1]
        else:
            got = {}
            h = blk.mlp.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0].detach().clone()))
            with torch.inference_mode():
                model(input_ids=ids, use_cache=False)
            h.remove()
            x = got["x"][:, -1]
        module = blk.mlp
    else:
        x, module = block_out[:, -1], blk
    z, recon = _reference_encode(coder_folder, x.float())
    vals, inds = prep.test_latents
    dense = np.zeros((len(vals), prep.num_latents), np.float32)
    np.put_along_axis(dense, inds.astype(np.int64), vals, axis=1)
    np.testing.assert_allclose(dense, z.numpy(), atol=1e-4)
    ce_coder = _ce_with_last_replaced(model, module, ids, targets, recon)
    np.testing.assert_allclose(prep.ce_base["coder"], ce_coder.numpy(), atol=2e-3)
    if kind == "transcoder":
        ce_zero = _ce_with_last_replaced(model, module, ids, targets, torch.zeros_like(recon))
        np.testing.assert_allclose(prep.ce_base["zero_output"], ce_zero.numpy(), atol=2e-3)
    else:
        assert np.isnan(prep.ce_base["zero_output"]).all()
    assert np.isfinite(prep.ce_base["clean"]).all()


def test_local_copies_keep_the_task_hash(standins):
    for tid in PAPER_TASKS:
        spec = load_task(str(task_toml(tid)))
        local = load_task(str(task_toml(tid)), [f"subject.path={json.dumps(str(standins / 'pythia'))}",
                                                f"coder.path={json.dumps(str(standins / 'sst' / 'layers.6.mlp'))}",
                                                f"corpus.path={json.dumps(str(standins / 'pile.jsonl'))}"])
        assert local.hash == spec.hash, tid


def test_transcoder_task_on_standins_via_path_overrides(standins, cache_env):
    from harness.data.prepare import prepare

    folder = standins / "sst" / "layers.6.mlp"
    spec = load_task(str(task_toml("pythia160m-l6-transcoder")), SMALL + [
        f"subject.path={json.dumps(str(standins / 'pythia'))}",
        f"coder.path={json.dumps(str(folder))}",
        f"corpus.path={json.dumps(str(standins / 'pile.jsonl'))}"])
    prep = prepare(spec)
    assert prep.num_latents == L and prep.k == K and len(prep.rewritten) == L
    assert prep.splits["test"].shape == (8, 33) and prep.splits["calibration"].shape == (8, 33)
    assert prep.det_pos.shape == (L, 2) and prep.det_neg.shape == (L, 2)
    _check_against_reference(prep, folder, layer=6)
    pins = json.loads((prep.cache_dir / "hub_pins.json").read_text())
    assert f"hub:{SST_REPO}/layers.6.mlp/sae.safetensors" in pins


def test_transcoder_lite_on_a_legacy_skip_transcoder_and_zst_corpus(standins, cache_env):
    from harness.model.coder import SparseCoder
    from harness.data.prepare import prepare

    folder = standins / "sst-legacy" / "layers.6.mlp"
    legacy = SparseCoder.load(folder, kind="transcoder")
    assert legacy.subtract_b_dec and legacy.W_skip is not None  # no `transcode` key: b_dec is subtracted
    spec = load_task(str(task_toml("pythia160m-l6-transcoder-lite")), SMALL + FEW_FREQUENT + [
        f"subject.path={json.dumps(str(standins / 'pythia'))}",
        f"coder.path={json.dumps(str(folder))}",
        f"corpus.path={json.dumps(str(standins / 'pile.jsonl.zst'))}"])
    prep = prepare(spec)
    rate = prep.table.fire_rate
    assert list(prep.rewritten) == sorted(np.argsort(-rate, kind="stable")[:4].tolist())
    _check_against_reference(prep, folder, layer=6)


def test_sae_task_on_standins_via_local_sources(standins, cache_env):
    from harness.data.prepare import prepare

    corpus = standins / "fineweb.parquet"
    if not corpus.is_file():
        corpus = standins / "pile.jsonl"
    folder = standins / "sae" / "layers.6"
    spec = load_task(str(task_toml("pythia160m-l6-sae")), SMALL + [
        # subject.source="local" cannot be used while the file keeps id/revision (ModelRef refuses them);
        # a path next to the hub source is the supported way, and keeps the task hash.
        f"subject.path={json.dumps(str(standins / 'pythia'))}",
        'coder.source="local"', f"coder.path={json.dumps(str(folder))}",
        'corpus.source="local-text"', f"corpus.path={json.dumps(str(corpus))}"])
    prep = prepare(spec)
    assert prep.spec.coder.kind == "sae" and prep.num_latents == L
    _check_against_reference(prep, folder, layer=6)


def test_sae_lite_from_a_filled_hf_cache_offline(standins, cache_env, monkeypatch):
    from harness.data.prepare import prepare

    monkeypatch.setenv("HF_HOME", str(standins / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    spec = load_task(str(task_toml("pythia160m-l6-sae-lite")), SMALL + FEW_FREQUENT + [
        f"subject.path={json.dumps(str(standins / 'pythia'))}"])
    assert [w for w, _ in inputs.missing_hub_inputs(spec)] == []  # coder and corpus come from the cache
    prep = prepare(spec)
    assert len(prep.rewritten) == 4
    snap = standins / "hf_home" / "hub" / f"models--{SAE_REPO[0].replace('/', '--')}" / "snapshots" / SAE_REPO[1]
    _check_against_reference(prep, snap / "layers.6", layer=6)
    pins = json.loads((prep.cache_dir / "hub_pins.json").read_text())
    from harness.testing.tiny import sha256_file

    assert pins[f"hub:{SAE_REPO[0]}/layers.6/sae.safetensors"] == sha256_file(snap / "layers.6" / "sae.safetensors")
    # the corpus was read from the cached .jsonl.zst: same tokens as the plain jsonl copy
    tokens = np.load(prep.cache_dir / "corpus_tokens.npy")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(standins / "pythia"))
    first = json.loads((standins / "pile.jsonl").read_text().splitlines()[0])["text"]
    ids = tok(first, add_special_tokens=False)["input_ids"]
    assert tokens[: len(ids)].tolist() == ids


def test_smollm2_pin_refuses_a_different_file(standins, cache_env, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(standins / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    spec = load_task(str(task_toml("smollm2-135m-l8-skip-transcoder")),
                     [f"subject.path={json.dumps(str(standins / 'smollm2'))}"])
    with pytest.raises(HarnessError, match="sha256 of .* the task pins 07f811a32b7c0deb"):
        inputs.fetch_coder_folder(spec)


def test_smollm2_task_copy_on_standins(standins, cache_env, monkeypatch, tmp_path):
    """A copy of the real task without its sha256 pin (the stand-in is not the pinned file)."""
    from harness.data.prepare import prepare

    text = task_toml("smollm2-135m-l8-skip-transcoder").read_text()
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith('"hub:'))
    copy = tmp_path / "smollm2-copy" / "task.toml"
    copy.parent.mkdir()
    copy.write_text(text)
    monkeypatch.setenv("HF_HOME", str(standins / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    overrides = SMALL + [f"subject.path={json.dumps(str(standins / 'smollm2'))}"]
    if not (standins / "fineweb.parquet").is_file():
        overrides.append(f"corpus.path={json.dumps(str(standins / 'pile.jsonl'))}")
    spec = load_task(str(copy), overrides)
    prep = prepare(spec)
    snap = standins / "hf_home" / "hub" / f"models--{SMOL_TC[0].replace('/', '--')}" / "snapshots" / SMOL_TC[1]
    _check_against_reference(prep, snap / "model.layers.8.mlp", layer=8)


def test_missing_coder_file_is_named(standins, cache_env, tmp_path):
    broken = tmp_path / "layers.6.mlp"
    broken.mkdir()
    (broken / "cfg.json").write_text((standins / "sst" / "layers.6.mlp" / "cfg.json").read_text())
    spec = load_task(str(task_toml("pythia160m-l6-transcoder")), [f"coder.path={json.dumps(str(broken))}"])
    with pytest.raises(HarnessError, match=r"sae\.safetensors is missing.*coder\.path"):
        inputs.fetch_coder_folder(spec)


def test_missing_corpus_copy_is_named(standins, cache_env, tmp_path):
    from harness.data.corpus import load_token_stream

    spec = load_task(str(task_toml("pythia160m-l6-sae")), [f"corpus.path={json.dumps(str(tmp_path / 'nope.jsonl'))}"])
    with pytest.raises(HarnessError, match=r"nope\.jsonl is missing.*train/00\.jsonl\.zst"):
        load_token_stream(spec, build_tokenizer(synthetic_texts(20, 0)), 100, tmp_path)
