"""SAELens's saved format: a folder holding `cfg.json` and `sae_weights.safetensors` (`SAE.save_model`).

Read without the sae-lens package (docs/bring-your-own.md holds what was checked against it, and
tests/fixtures/saelens/ holds folders sae-lens 6.54.12 wrote, with its own encode/decode outputs):

- cfg.json: `architecture`, `d_in`, `d_sae`, `apply_b_dec_to_input`, `normalize_activations`, `k` (topk),
  `d_out` (transcoders), `metadata` {`hook_name`, `hook_name_out`, `model_name`, `neuronpedia_id`...}.
  A cfg without `sae_lens_version` is a pre-6 one: flat keys, `activation_fn_str`/`activation_fn_kwargs.k`
  for TopK, a boolean `normalize_activations`; it is read as sae-lens converts it.
- weights: `W_enc` [d_in, d_sae], `b_enc` [d_sae], `W_dec` [d_sae, d_out], `b_dec` [d_out], `threshold`
  [d_sae] (JumpReLU), `W_skip` [d_out, d_in] (skip transcoders).
- maths: pre = (x − b_dec·apply_b_dec_to_input) W_enc + b_enc; standard ReLU(pre); TopK the k largest of
  pre, then ReLU; JumpReLU ReLU(pre)·(pre > threshold); decode acts W_dec + b_dec (+ x W_skip^T).
  `rescale_acts_by_decoder_norm` (TopK) multiplies pre by the decoder rows' norms and divides them out
  when decoding; it is folded into the weights here (the same activations, the same output).

Refused, one line each, because the harness could not compute what the checkpoint's authors trained:
gated SAEs, activation normalisation that depends on each input (`constant_norm_rescale`, `layer_norm`),
per-head (`hook_z`) SAEs, `log_threshold` files, transcoders whose output width differs from their input's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError
from harness.model.coder import SAELENS_WEIGHTS, SparseCoder, read_json_cfg

ARCHITECTURES = {
    # architecture: (activation, kind, skip)
    "standard": ("relu", "sae", False), "topk": ("topk", "sae", False), "jumprelu": ("jumprelu", "sae", False),
    "transcoder": ("relu", "transcoder", False), "skip_transcoder": ("relu", "transcoder", True),
    "jumprelu_transcoder": ("jumprelu", "transcoder", False),
    "jumprelu_skip_transcoder": ("jumprelu", "transcoder", True),
}
_REFUSED = {
    "gated": "gated SAEs (a gate and a magnitude path) are not supported",
    "batchtopk": "a BatchTopK training checkpoint: save it for inference (sae-lens saves it as jumprelu)",
    "matryoshka_batchtopk": "a training checkpoint: save it for inference (sae-lens saves it as jumprelu)",
}
# `expected_average_only_in` is a no-op once saved: sae-lens folds its factor into the weights only in
# from_pretrained, from the registry, and load_from_disk applies nothing at run time.
_NORMALISATIONS = ("none", "expected_average_only_in")


def read_saelens_cfg(folder: Path) -> dict[str, Any]:
    """cfg.json in sae-lens 6's terms (older cfgs converted), checked; no weights are read."""
    folder = Path(folder)
    where = folder / "cfg.json"
    raw = read_json_cfg(folder)
    cfg = dict(raw) if _is_v6(raw) else _from_v5(raw)
    arch = cfg.get("architecture", "standard")
    if arch in _REFUSED:
        raise HarnessError(f"{where}: architecture {arch!r}: {_REFUSED[arch]}")
    if arch not in ARCHITECTURES:
        raise HarnessError(f"{where}: architecture {arch!r} is not one the harness reads; it reads "
                           f"{', '.join(ARCHITECTURES)}")
    for key in ("d_in", "d_sae") + (("k",) if arch == "topk" else ()) + (
            ("d_out",) if ARCHITECTURES[arch][1] == "transcoder" else ()):
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise HarnessError(f"{where}: {key!r} must be a positive integer, got {v!r}")
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm not in _NORMALISATIONS:
        raise HarnessError(f"{where}: normalize_activations = {norm!r} rescales each input by its own statistics, "
                           "which the harness does not reproduce; use an SAE saved with \"none\"")
    if (cfg.get("reshape_activations") or "none") != "none":
        raise HarnessError(f"{where}: reshape_activations = {cfg['reshape_activations']!r} (a per-head SAE); the "
                           "harness hooks whole module outputs")
    kind = ARCHITECTURES[arch][1]
    if kind == "transcoder":
        if cfg["d_out"] != cfg["d_in"]:
            raise HarnessError(f"{where}: d_out = {cfg['d_out']} differs from d_in = {cfg['d_in']}; the harness "
                               "replaces an MLP, whose output is as wide as its input")
        if cfg.get("apply_b_dec_to_input", True):
            raise HarnessError(f"{where}: a transcoder with apply_b_dec_to_input = true (sae-lens refuses it too); "
                               "set it to false")
    cfg["architecture"] = arch
    cfg["normalize_activations"] = norm
    return cfg


def load_saelens(folder: Path, kind: str | None = None, k: int = 0) -> SparseCoder:
    """The SAE or transcoder in `folder` as a `SparseCoder`; `k` is the most latents stored per token for an
    architecture without TopK (the task's `[coder] k`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_saelens_cfg(folder)
    arch = cfg["architecture"]
    activation, arch_kind, skip = ARCHITECTURES[arch]
    st = folder / SAELENS_WEIGHTS
    if kind is not None and kind != arch_kind:
        raise HarnessError(f"{folder}: a SAELens {arch} is a {arch_kind}, but the task says kind = \"{kind}\"; set "
                           f"kind = \"{arch_kind}\"")
    try:
        tensors = load_file(str(st))
    except (SafetensorError, OSError, ValueError) as e:
        raise HarnessError(f"{st} cannot be read as safetensors ({e}): re-download the coder") from None
    d, L = cfg["d_in"], cfg["d_sae"]
    shapes = {"W_enc": (d, L), "b_enc": (L,), "W_dec": (L, d), "b_dec": (d,)}
    if activation == "jumprelu":
        shapes["threshold"] = (L,)
    if skip:
        shapes["W_skip"] = (d, d)
    if "log_threshold" in tensors:
        raise HarnessError(f"{st} holds log_threshold (a JumpReLU training checkpoint); save it for inference "
                           "with sae-lens, which writes threshold")
    missing, extra = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
    if missing or extra:
        raise HarnessError(f"{st}: a SAELens {arch} holds {', '.join(shapes)}; "
                           + (f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}")
                           + " — cfg.json and the weights do not match")
    for name, t in tensors.items():
        if tuple(t.shape) != shapes[name]:
            raise HarnessError(f"{st}: {name} has shape {tuple(t.shape)}, cfg.json (d_in={d}, d_sae={L}) implies "
                               f"{shapes[name]}")
    f32 = {n: t.to(torch.float32).contiguous() for n, t in tensors.items()}
    W_enc, b_enc, W_dec = f32["W_enc"].T.contiguous(), f32["b_enc"], f32["W_dec"]
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        norms = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    if activation == "topk":
        k_eff = int(cfg["k"])
        if k and k != k_eff:
            raise HarnessError(f"{folder}: the task declares k = {k} but the TopK SAE has k = {k_eff}")
    else:
        if not k:
            raise HarnessError(f"{folder}: a {arch} coder has no fixed number of active latents; declare [coder] k (new-task: --k), "
                               "the most latents the harness stores per token (`harness prepare` warns when a token has more)")
        k_eff = min(int(k), L)
    return SparseCoder(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=f32["b_dec"], W_skip=f32.get("W_skip"),
                       k=k_eff, kind=arch_kind, subtract_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
                       cfg=cfg, activation=activation, threshold=f32.get("threshold"), source_format="saelens")


def hook_name(cfg: dict[str, Any]) -> tuple[str, str]:
    """(input hook, output hook) in TransformerLens names, '' where the cfg does not say."""
    meta = _dict(cfg.get("metadata"))
    hin = meta.get("hook_name") or cfg.get("hook_name") or ""
    return str(hin), str(meta.get("hook_name_out") or "")


def neuronpedia_id(cfg: dict[str, Any]) -> str:
    """`<modelId>/<layer>` of the SAE on Neuronpedia, '' where the cfg does not say."""
    np_id = _dict(cfg.get("metadata")).get("neuronpedia_id") or cfg.get("neuronpedia_id")
    return np_id if isinstance(np_id, str) else ""


def _is_v6(cfg: dict[str, Any]) -> bool:
    meta = _dict(cfg.get("metadata"))
    version = str(cfg.get("sae_lens_version") or meta.get("sae_lens_version") or "")
    try:
        return int(version.split(".")[0]) >= 6
    except ValueError:
        return False


def _from_v5(raw: dict[str, Any]) -> dict[str, Any]:
    """A pre-6 flat cfg as sae-lens 6 converts it: TopK from activation_fn, a boolean normalisation named."""
    cfg = dict(raw)
    cfg.setdefault("architecture", "standard")
    kwargs = _dict(cfg.get("activation_fn_kwargs"))
    if cfg.get("activation_fn_str", cfg.get("activation_fn")) == "topk" and "k" in kwargs:
        cfg["architecture"], cfg["k"] = "topk", kwargs["k"]
    elif cfg["architecture"] == "topk" and "k" in kwargs:
        cfg["k"] = kwargs["k"]
    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool):
        cfg["normalize_activations"] = "expected_average_only_in" if norm else "none"
    cfg["metadata"] = {k: cfg[k] for k in ("hook_name", "model_name", "neuronpedia_id") if k in cfg}
    return cfg


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}
