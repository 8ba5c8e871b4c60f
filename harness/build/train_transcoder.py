"""Train, evaluate and save a TopK skip-transcoder on one MLP of a Llama-family model (on the CPU).

Data: pairs (x, y) = (input, output) of `model.model.layers[L].mlp` for every token of the corpus's
training part (before `eval_start`). They are either captured while the corpus was generated
(`<work>/corpus/acts/train-*.safetensors`, bf16) or collected here by a forward pass of the model cut to
its first L+1 layers over windows of the corpus (`collect_mlp_activations`).

Coder: eai-sparsify's `SparseCoder` (its Python API; the CPU path, `SPARSIFY_DISABLE_TRITON=1`) with
`transcode=True, skip_connection=True, activation="topk"`: z = TopK(relu(W_enc x + b_enc)) (no b_dec
subtraction), y_hat = z @ W_dec + b_dec + x @ W_skip.T. Initialisation as sparsify's trainer does for a
transcoder: W_dec = 0, W_skip = 0, b_enc = 0, b_dec = mean of y. The decoder rows are not normalised
(`normalize_decoder=false`, as sparsify's trainer for transcoders). Loss: FVU (sparsify's) + auxk_alpha x
AuxK loss on latents that have not fired for `dead_tokens` training tokens. Adam, linear warm-up, then
constant LR with a linear decay over the last 20% of steps. Training runs on rescaled data (a*x, b*y, each
with mean squared norm d; SmolLM2's layer-12 MLP maps inputs of norm ~3 to outputs of norm ~30) and the
scales are folded back into the weights exactly before saving (`fold_scales`). Checkpoint (model + optimiser + RNG + position)
every `ckpt_every` steps; a rerun resumes from it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.io import save_npz  # noqa: E402


@dataclass(frozen=True)
class TrainConfig:
    num_latents: int = 4096
    k: int = 32
    batch_tokens: int = 1024
    epochs: int = 3
    lr: float = 2e-3
    warmup_steps: int = 100
    decay_frac: float = 0.2
    auxk_alpha: float = 1 / 32
    dead_tokens: int = 50_000
    seed: int = 0
    ckpt_every: int = 100
    # False: y_hat = z W_dec + b_dec only. Deleting every latent then leaves b_dec (about the mean output),
    # which is what gives a layer-0 coder its large CE denominator (docs: the CE task's README).
    skip_connection: bool = True


# ---------------------------------------------------------------------------------------------------
# activation collection

def truncate_layers(model, num_layers: int):
    """Keep only the first `num_layers` decoder layers (in place); returns the model."""
    model.model.layers = model.model.layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    return model


@torch.inference_mode()
def collect_mlp_activations(model, layer: int, windows: np.ndarray, batch_size: int = 16,
                            progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) float32 [n_windows * T, d]: input and output of `model.model.layers[layer].mlp` on every
    position of every window ([n, T] token ids). Runs only the layers up to `layer` (an exception from a
    hook stops the forward pass right after that MLP)."""

    from harness.model.hooks import Capture, StopForward

    with Capture(model.model.layers[layer].mlp, stop=True, keep_all=True) as cap:
        for s in range(0, len(windows), batch_size):
            ids = torch.as_tensor(np.asarray(windows[s:s + batch_size], dtype=np.int64))
            try:
                with torch.no_grad():
                    model.model(input_ids=ids, use_cache=False)
            except StopForward:
                pass
            if progress is not None:
                progress(min(s + batch_size, len(windows)))
    d = model.config.hidden_size
    x = torch.cat([t.reshape(-1, d) for t in cap.xs]).float()
    y = torch.cat([t.reshape(-1, d) for t in cap.ys]).float()
    return x, y


def corpus_windows(tokens: np.ndarray, start: int, stop: int, T: int) -> np.ndarray:
    """Consecutive non-overlapping windows of T tokens inside tokens[start:stop]."""
    n = (stop - start) // T
    return np.asarray(tokens[start:start + n * T], dtype=np.int64).reshape(n, T)


# ---------------------------------------------------------------------------------------------------
# coder

def make_coder(d_in: int, cfg: TrainConfig, b_dec: torch.Tensor | None = None):
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(cfg.seed)
    sc_cfg = SparseCoderConfig(activation="topk", num_latents=cfg.num_latents, k=cfg.k,
                               expansion_factor=max(1, cfg.num_latents // d_in), normalize_decoder=False,
                               multi_topk=False, skip_connection=cfg.skip_connection, transcode=True)
    coder = SparseCoder(d_in, sc_cfg, device="cpu", dtype=torch.float32)
    if b_dec is not None:
        coder.b_dec.data.copy_(b_dec)
    return coder


def data_scales(x: torch.Tensor, y: torch.Tensor, rows: int = 200_000) -> tuple[float, float]:
    """(a, b) that bring the mean squared norm of a*x and of b*y to d (about unit scale per dimension)."""
    d = x.shape[1]
    xs, ys = x[:rows].float(), y[:rows].float()
    return float((d / xs.pow(2).sum(1).mean()) ** 0.5), float((d / ys.pow(2).sum(1).mean()) ** 0.5)


@torch.no_grad()
def fold_scales(coder, a: float, b: float):
    """The coder on raw data equivalent to `coder` trained on (a*x, b*y): exact, returns a new coder."""
    cfg = coder.cfg
    from sparsify import SparseCoder

    raw = SparseCoder(coder.d_in, cfg, device="cpu", dtype=coder.dtype)
    raw.encoder.weight.copy_(coder.encoder.weight * a)
    raw.encoder.bias.copy_(coder.encoder.bias)
    assert raw.W_dec is not None and coder.W_dec is not None     # sparsify types them optional
    raw.W_dec.copy_(coder.W_dec / b)
    raw.b_dec.copy_(coder.b_dec / b)
    if coder.W_skip is not None and raw.W_skip is not None:
        raw.W_skip.copy_(coder.W_skip * (a / b))
    return raw


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = int(total * (1 - cfg.decay_frac))
    if step >= decay_start and total > decay_start:
        return cfg.lr * max(0.05, (total - step) / (total - decay_start))
    return cfg.lr


def train(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, ckpt_dir: Path | None = None,
          log=print, stop_after: int | None = None):
    """Train a skip-transcoder on (x, y) rows; resumable from `ckpt_dir/ckpt.pt`. Returns (coder, stats),
    the coder acting on raw (unscaled) x and y.

    `stop_after` (tests): return after that many steps of this call, leaving the checkpoint behind.
    """
    n, d = x.shape
    steps_per_epoch = n // cfg.batch_tokens
    total = steps_per_epoch * cfg.epochs
    if total == 0:
        raise ValueError(f"{n} training rows are fewer than one batch of {cfg.batch_tokens}")
    # Train on rescaled data (a*x, b*y with mean squared norms d), fold the scales back at the end: Adam's
    # steps are about lr in size whatever the data's scale, so unit-scale data makes one lr fit all layers.
    a, b = data_scales(x, y)
    coder = make_coder(d, cfg, b_dec=b * y[: min(n, 200_000)].float().mean(0))
    opt = torch.optim.Adam(coder.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    last_fired = torch.zeros(cfg.num_latents, dtype=torch.long)  # tokens since each latent last fired
    step = 0
    history: list[dict] = []
    ckpt = Path(ckpt_dir) / "ckpt.pt" if ckpt_dir is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if state["cfg"] != asdict(cfg) or state["n"] != n:
            raise ValueError(f"{ckpt} belongs to another run (cfg or data size differ): delete it to restart")
        coder.load_state_dict(state["coder"])
        opt.load_state_dict(state["opt"])
        last_fired = state["last_fired"]
        step = state["step"]
        history = state["history"]
        log(f"train: resumed from {ckpt} at step {step}/{total}")

    def save_ckpt():
        if ckpt is None:
            return
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"cfg": asdict(cfg), "n": n, "coder": coder.state_dict(), "opt": opt.state_dict(),
                    "last_fired": last_fired, "step": step, "history": history}, tmp)
        os.replace(tmp, ckpt)

    t0 = time.time()
    run_fvu, run_n, this_call = 0.0, 0, 0
    while step < total:
        epoch, i = divmod(step, steps_per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        idx = perm[i * cfg.batch_tokens:(i + 1) * cfg.batch_tokens]
        xb, yb = a * x[idx].float(), b * y[idx].float()
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, total, cfg)
        dead_mask = last_fired > cfg.dead_tokens if cfg.auxk_alpha > 0 else None
        out = coder(xb, yb, dead_mask=dead_mask)
        loss = out.fvu + cfg.auxk_alpha * out.auxk_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            fired = torch.zeros(cfg.num_latents, dtype=torch.bool)
            fired[out.latent_indices[out.latent_acts > 0].flatten()] = True
            last_fired += len(idx)
            last_fired[fired] = 0
        run_fvu += float(out.fvu.detach())
        run_n += 1
        step += 1
        this_call += 1
        if step % cfg.ckpt_every == 0 or step == total:
            dead = float((last_fired > cfg.dead_tokens).float().mean())
            rate = this_call * cfg.batch_tokens / max(time.time() - t0, 1e-9)
            history.append({"step": step, "fvu": run_fvu / run_n, "dead_frac": dead})
            log(f"train: step {step}/{total} fvu {run_fvu / run_n:.4f} dead {dead:.3f} "
                f"lr {opt.param_groups[0]['lr']:.1e} ({rate:.0f} tokens/s)")
            run_fvu, run_n = 0.0, 0
            save_ckpt()
        if stop_after is not None and this_call >= stop_after:
            save_ckpt()
            break
    return fold_scales(coder, a, b), {
        "steps": step, "total_steps": total, "history": history, "scales": {"x": a, "y": b},
        "dead_frac_train": float((last_fired > cfg.dead_tokens).float().mean())}


@torch.no_grad()
def evaluate_reconstruction(coder, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> dict:
    """FVU (total squared error / total variance of y around its mean), dead fraction and firing stats."""
    L = coder.num_latents
    counts = torch.zeros(L, dtype=torch.long)
    sse = 0.0
    mu = y.mean(0)
    tv = float((y - mu).pow(2).sum())
    for s in range(0, len(x), batch):
        xb, yb = x[s:s + batch], y[s:s + batch]
        out = coder(xb, yb)
        sse += float((yb - out.sae_out).pow(2).sum())
        act = out.latent_indices[out.latent_acts > 0]
        counts += torch.bincount(act.flatten(), minlength=L)
    fires = counts.float() / len(x)
    return {"fvu": sse / tv, "dead_frac": float((counts == 0).float().mean()), "tokens": int(len(x)),
            "mean_active_per_token": float(counts.sum()) / len(x),
            "max_fire_rate": float(fires.max()), "latents_fire_rate_over_10pct": int((fires > 0.1).sum())}


def save_coder(coder, folder: Path) -> None:
    """sparsify format: cfg.json (+ d_in) and sae.safetensors, written by sparsify itself."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    coder.save_to_disk(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)


# ---------------------------------------------------------------------------------------------------
# CE at the last position of held-out contexts

def last_position_ce(model, layer: int, coder, contexts: np.ndarray, batch_size: int = 16,
                     progress=None) -> dict[str, np.ndarray]:
    """CE at the last position of held-out contexts for the build's report: clean, coder (the transcoder's
    output from the same MLP input) and zero_output, at `layer`: scoring's own engine
    (`harness.model.patch.last_position_ce`)."""
    from harness.model.patch import last_position_ce as engine

    hp = f"layers.{layer}.mlp"

    def coder_out(last):
        return coder(last.x).sae_out.to(last.y.dtype)

    def latent_zero_out(last):
        # Every latent deleted: b_dec (+ the skip path where there is one), what the protocol's latent_zero leaves.
        out = coder.b_dec.expand_as(last.x)
        if coder.W_skip is not None:
            out = out + last.x @ coder.W_skip.T
        return out.to(last.y.dtype)

    return engine(model, contexts, {"clean": None, "coder": (hp, coder_out),
                                    "latent_zero": (hp, latent_zero_out),
                                    "zero_output": (hp, lambda last: torch.zeros_like(last.y))},
                  batch_size=batch_size, progress=progress)


# ---------------------------------------------------------------------------------------------------
# the build steps (called by harness.build.smollm2_task)

def load_training_activations(work: Path, n_chunks: int, layer: int, load_subject, log, window: int = 256,
                              corpus_file: Path | None = None) -> tuple:
    """x, y (bf16) of the training part: captured during generation, or collected (and kept, so that an
    interrupted run resumes) by a forward pass for chunks lacking them."""
    from safetensors.torch import load_file

    from harness.build import corpus as C

    xs, ys = [], []
    model = None
    folder = C.acts_dir(work / "corpus", layer)
    if n_chunks == 0 or not (work / "corpus").is_dir():
        if corpus_file is None:
            raise FileNotFoundError(f"no corpus chunks under {work / 'corpus'} and no corpus file given")
        return _activations_from_corpus_file(work, corpus_file, layer, load_subject, log, window)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_chunks):
        p = folder / f"{C.chunk_name('train', i)}.safetensors"
        if not p.is_file():
            if model is None:
                # bf16 as the generation-time capture (corpus step) was: AMX makes it ~3x faster here
                model = truncate_layers(load_subject()[0], layer + 1).to(torch.bfloat16)
            toks = C.chunk_tokens(work / "corpus", "train", i)
            # Windows over the chunk: a window can start inside one sample and reach into the next, whose
            # tokens then see the previous sample's end, which generation-time capture does not.
            w = corpus_windows(toks, 0, len(toks), window)
            x, y = collect_mlp_activations(model, layer, w)
            C.save_acts(p, x, y)
            log(f"train: collected {len(x)} activations of chunk train-{i:04d} (layer {layer}) by a forward pass")
        t = load_file(str(p))
        xs.append(t["x"])
        ys.append(t["y"])
    return torch.cat(xs), torch.cat(ys)


def _activations_from_corpus_file(work: Path, corpus_file: Path, layer: int, load_subject, log, window: int) -> tuple:
    """x, y (bf16) from the committed corpus.npz's training part, for a build without the generation chunks
    (a new coder on the committed corpus). Windows of `window` tokens laid end to end over tokens[:eval_start];
    kept in the work folder so a rerun does not collect again."""
    from safetensors.torch import load_file

    from harness.build import corpus as C

    cache = work / f"layers.{layer}.mlp" / "train_acts.safetensors"
    if cache.is_file():
        t = load_file(str(cache))
        return t["x"], t["y"]
    with np.load(corpus_file) as z:
        tokens, eval_start = z["tokens"], int(z["eval_start"])
    # float32, the dtype the tasks run the subject in (and on CPUs without AVX-512 BF16 torch's bf16 GEMMs
    # are emulated: measured 47x slower than float32 on an AMD EPYC Zen 3).
    model = truncate_layers(load_subject()[0], layer + 1)
    w = corpus_windows(tokens, 0, eval_start, window)
    x, y = collect_mlp_activations(model, layer, w)
    x, y = x.to(torch.bfloat16), y.to(torch.bfloat16)
    cache.parent.mkdir(parents=True, exist_ok=True)
    C.save_acts(cache, x, y)   # atomic: a killed run never leaves a truncated cache to resume from
    log(f"train: collected {len(x)} activation pairs of layer {layer} from corpus.npz's training part")
    return x, y


def run_steps(steps, *, work: Path, cache: Path, task_dir: Path, layer: int, log, load_subject,
              train_tokens: int = 0, cfg: TrainConfig = TrainConfig(), eval_windows: int = 200,
              eval_T: int = 256, ce_contexts: int = 500, ce_T: int = 64, seed: int = 0,
              corpus_file: Path | None = None) -> None:
    from harness.io import sha256_file

    corpus_file = corpus_file or task_dir / "corpus.npz"
    sp = work / "corpus_summary.json"
    # A coder trained on an already committed corpus has no generation summary: its chunks are not needed.
    summary = json.loads(sp.read_text()) if sp.is_file() else {"train_chunks": 0, "corpus_file": corpus_file.name}
    coder_dir = task_dir / "coder" / f"layers.{layer}.mlp"
    # Checkpoints and reports per layer: a build for another layer must never resume this one's.
    lwork = work / f"layers.{layer}.mlp"
    lwork.mkdir(parents=True, exist_ok=True)
    report_path = lwork / "report.json"

    if "train" in steps:
        x, y = load_training_activations(work, summary["train_chunks"], layer, load_subject, log,
                                         corpus_file=corpus_file)
        if train_tokens:
            x, y = x[:train_tokens], y[:train_tokens]
        log(f"train: {len(x)} training activation pairs, {cfg}")
        torch.manual_seed(cfg.seed)
        coder, stats = train(x, y, cfg, ckpt_dir=lwork / "train", log=log)
        stats["train_rows"] = len(x)
        del x, y
        save_coder(coder, coder_dir)
        stats["config"] = asdict(cfg)
        (lwork / "train_stats.json").write_text(json.dumps(stats, indent=1))
        log(f"train: saved {coder_dir}")

    if "evaluate" in steps:
        from sparsify import SparseCoder

        coder = SparseCoder.load_from_disk(coder_dir)
        model, _ = load_subject()
        with np.load(corpus_file) as z:
            tokens = z["tokens"]
            eval_start = int(z["eval_start"])
        # Held-out reconstruction: consecutive windows at the start of the evaluation part.
        w = corpus_windows(tokens, eval_start, len(tokens), eval_T)[:eval_windows]
        full_layers = model.model.layers
        truncate_layers(model, layer + 1)
        x, y = collect_mlp_activations(model, layer, w)
        model.model.layers = full_layers
        model.config.num_hidden_layers = len(full_layers)
        rec = evaluate_reconstruction(coder, x, y)
        log(f"evaluate: held-out FVU {rec['fvu']:.4f}, dead {rec['dead_frac']:.4f} on {rec['tokens']} tokens")
        # CE on random contexts of the evaluation part.
        rng = np.random.default_rng(seed)
        starts = rng.choice(len(tokens) - eval_start - ce_T, size=ce_contexts, replace=False) + eval_start
        ctx = np.stack([tokens[s:s + ce_T + 1] for s in np.sort(starts)]).astype(np.int64)
        ce = last_position_ce(model, layer, coder, ctx)
        save_npz(lwork / "ce_heldout.npz", contexts=ctx, **ce)
        ce_stats: dict[str, Any] = {c: {"mean": float(v.mean()), "median": float(np.median(v))} for c, v in ce.items()}
        boot = np.random.default_rng(seed).integers(0, len(ctx), size=(2000, len(ctx)))

        def mean_ci95(d: np.ndarray) -> list[float]:
            means = d[boot].mean(1)
            return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]

        for c in ("coder", "latent_zero", "zero_output"):
            ce_stats[c]["delta_mean_ci95"] = mean_ci95(ce[c] - ce["clean"])
        ce_stats["zero_minus_coder_mean_ci95"] = mean_ci95(ce["zero_output"] - ce["coder"])
        d = ce["latent_zero"] - ce["coder"]
        ce_stats["latent_zero_minus_coder"] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)),
                                               "mean_ci95": mean_ci95(d)}
        for c in ce:
            v = ce_stats[c]
            log(f"evaluate: CE {c}: mean {v['mean']:.4f} median {v['median']:.4f} "
                f"{'delta 95% CI ' + str(v['delta_mean_ci95']) if 'delta_mean_ci95' in v else ''}")
        report = {"held_out": rec, "held_out_windows": int(len(w)), "held_out_T": eval_T,
                  "ce": ce_stats, "ce_contexts": ce_contexts, "ce_T": ce_T, "ce_seed": seed,
                  "ce_patch": "MLP output replaced at the window's last position only",
                  "delta_ce_coder_mean": ce_stats["coder"]["mean"] - ce_stats["clean"]["mean"],
                  "delta_ce_zero_mean": ce_stats["zero_output"]["mean"] - ce_stats["clean"]["mean"]}
        report_path.write_text(json.dumps(report, indent=1))

    if "finish" in steps:
        arts = {}
        for rel in [f"coder/layers.{layer}.mlp/sae.safetensors", f"coder/layers.{layer}.mlp/cfg.json",
                    os.path.relpath(corpus_file, task_dir)]:
            p = task_dir / rel
            if p.is_file():
                arts[rel] = sha256_file(p)
        out = {"artifacts": arts, "corpus": summary,
               "report": json.loads(report_path.read_text()) if report_path.is_file() else None,
               "train": json.loads((lwork / "train_stats.json").read_text())
               if (lwork / "train_stats.json").is_file() else None}
        (task_dir / "artifacts.json").write_text(json.dumps(out, indent=1))
        log(f"finish: wrote {task_dir / 'artifacts.json'}")
