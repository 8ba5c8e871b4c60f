"""Sparse coders: sparsify's TopK coders, and SAELens's saved SAEs and transcoders (docs/protocol.md §1).

The maths mirror `sparsify.SparseCoder` (ReLU, then an unsorted top-k) and SAELens's inference classes
(`harness.model.saelens`), so that the latents the harness computes are the ones the checkpoint's authors
trained; the tests compare against sparsify itself and against fixtures written by the sae-lens package.

A TopK coder stores exactly k latents per token. A ReLU or JumpReLU coder has no fixed count: `k` is then
the most latents the harness stores per token for its activation tables (the task's `[coder] k`); the
code patched into the model (`code`) is always the coder's whole activation, and the re-sparsification
step (`resparsify`) is the coder's own sparsity rule: TopK keeps the k largest, JumpReLU zeroes each latent
below its threshold, ReLU keeps what is positive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.errors import HarnessError

KINDS = ("transcoder", "sae")
ACTIVATIONS = ("topk", "relu", "jumprelu")
_REQUIRED = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


@dataclass
class SparseCoder:
    W_enc: Tensor                 # [L, d]   (sparsify's encoder.weight)
    b_enc: Tensor                 # [L]
    W_dec: Tensor                 # [L, d]
    b_dec: Tensor                 # [d]
    W_skip: Tensor | None         # [d, d], applied as x @ W_skip.T
    k: int
    kind: str                     # "transcoder" | "sae"
    subtract_b_dec: bool          # = not cfg.get("transcode", False)   (legacy trap)
    cfg: dict = field(default_factory=dict)
    activation: str = "topk"      # "topk" | "relu" | "jumprelu" (see the module docstring for what k means)
    threshold: Tensor | None = None   # [L], jumprelu: a latent fires where its pre-activation exceeds it
    source_format: str = "sparsify"   # "sparsify" | "saelens": which files the folder holds

    @property
    def num_latents(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[1])

    # ------------------------------------------------------------------ I/O

    @classmethod
    def load(cls, folder: Path, kind: str | None = None, k: int = 0) -> SparseCoder:
        """The coder in `folder`, sparsify's (cfg.json + sae.safetensors) or SAELens's (cfg.json +
        sae_weights.safetensors). `k`: for a coder without TopK, the most latents stored per token."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if is_saelens_folder(folder):
            from harness.model.saelens import load_saelens

            return load_saelens(folder, kind, k)
        cfg_path, st_path = folder / "cfg.json", folder / "sae.safetensors"
        cfg, num_latents = read_cfg(folder)
        if not st_path.is_file():
            raise HarnessError(f"{st_path} is missing: the coder folder must be {_EXPECT}")
        d_in, k = cfg["d_in"], cfg["k"]

        try:
            tensors = load_file(str(st_path))
        except (SafetensorError, OSError, ValueError) as e:
            raise HarnessError(f"{st_path} cannot be read as safetensors ({e}): re-download the coder") from None
        missing = [n for n in _REQUIRED if n not in tensors]
        if missing:
            raise HarnessError(f"{st_path} lacks tensor(s) {', '.join(missing)}: expected sparsify's "
                               "encoder.weight, encoder.bias, W_dec, b_dec (and W_skip with skip_connection)")
        skip = bool(cfg.get("skip_connection", False))
        if skip != ("W_skip" in tensors):
            raise HarnessError(f"{st_path}: cfg.json says skip_connection={skip} but W_skip is "
                               f"{'present' if 'W_skip' in tensors else 'absent'}; the folder's files do not match")
        extra = sorted(set(tensors) - set(_REQUIRED) - {"W_skip"})
        if extra:
            raise HarnessError(f"{st_path} has unexpected tensor(s) {', '.join(extra)}: not a sparsify TopK coder")

        L, d = num_latents, d_in
        shapes = {"encoder.weight": (L, d), "encoder.bias": (L,), "W_dec": (L, d), "b_dec": (d,), "W_skip": (d, d)}
        for name, t in tensors.items():
            if tuple(t.shape) != shapes[name]:
                raise HarnessError(f"{st_path}: {name} has shape {tuple(t.shape)} but cfg.json (num_latents={L}, "
                                   f"d_in={d}) implies {shapes[name]}; the folder's files do not match")
        if k > L:
            raise HarnessError(f"{cfg_path}: k={k} exceeds num_latents={L}")

        cfg_kind = "transcoder" if (cfg.get("transcode", False) or skip) else "sae"
        if kind is None:
            kind = cfg_kind
        elif kind not in KINDS:
            raise HarnessError(f"coder kind {kind!r} for {folder} is unknown: use 'transcoder' or 'sae'")
        elif kind == "sae" and skip:
            raise HarnessError(f"{folder} has a skip connection (W_skip), so it is a transcoder, but the task says "
                               "kind = \"sae\": set kind = \"transcoder\" and hook the MLP")

        f32 = {n: t.to(torch.float32).contiguous() for n, t in tensors.items()}
        return cls(
            W_enc=f32["encoder.weight"], b_enc=f32["encoder.bias"], W_dec=f32["W_dec"], b_dec=f32["b_dec"],
            W_skip=f32.get("W_skip"), k=k, kind=kind,
            # Legacy trap: checkpoints older than sparsify f02711e have no "transcode" key and subtracted
            # b_dec before encoding even when they are transcoders; skip_connection says nothing about it.
            subtract_b_dec=not cfg.get("transcode", False),
            cfg=dict(cfg),
        )

    def save(self, folder: Path) -> None:
        """In sparsify's format, which holds TopK coders only."""
        from safetensors.torch import save_file

        if self.activation != "topk":
            raise HarnessError(f"a {self.activation} coder cannot be saved in sparsify's format (TopK only)")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = dict(self.cfg)
        cfg.setdefault("activation", "topk")
        cfg.setdefault("normalize_decoder", True)
        cfg.setdefault("multi_topk", False)
        cfg.update(
            num_latents=self.num_latents, k=self.k, d_in=self.d_in,
            expansion_factor=max(1, self.num_latents // self.d_in),
            skip_connection=self.W_skip is not None,
            # Written explicitly so that a re-saved legacy checkpoint keeps its encoding convention.
            transcode=not self.subtract_b_dec,
        )
        tensors = {"encoder.weight": self.W_enc, "encoder.bias": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.W_skip is not None:
            tensors["W_skip"] = self.W_skip
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(folder / "sae.safetensors"))
        (folder / "cfg.json").write_text(json.dumps(cfg))

    def to(self, device: torch.device | str) -> SparseCoder:
        """Moves the weights (in place) and returns self."""
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip", "threshold"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        return self

    # ---------------------------------------------------------------- maths

    def pre_acts(self, x: Tensor) -> Tensor:
        """ReLU(W_enc (x - b_dec?) + b_enc), [..., L]: the values TopK chooses from; for a JumpReLU coder
        only where the pre-activation exceeds the latent's threshold (strictly, as SAELens)."""
        x = x.to(self.W_enc.dtype)
        if self.subtract_b_dec:
            x = x - self.b_dec
        pre = F.linear(x, self.W_enc, self.b_enc)
        if self.threshold is not None:
            return F.relu(pre) * (pre > self.threshold)
        return F.relu(pre)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The k largest activations per token (values, indices): the coder's code for a TopK coder, what the
        activation tables store for the others."""
        # Unsorted, as sparsify does; with fewer than k positive pre-activations some values are exactly 0.
        values, indices = torch.topk(self.pre_acts(x), self.k, dim=-1, sorted=False)
        return values, indices

    def code(self, x: Tensor) -> Tensor:
        """The coder's whole code for x, dense [..., L]: what its decoder reads."""
        if self.activation == "topk":
            return self.dense(*self.encode(x))
        return self.pre_acts(x)

    def resparsify(self, z: Tensor) -> Tensor:
        """The protocol's re-sparsification of a code whose values were replaced: the coder's own rule."""
        if self.activation == "topk":
            return topk_dense(z, self.k)
        if self.threshold is not None:
            return z * (z > self.threshold)
        return F.relu(z)

    def dense(self, top_acts: Tensor, top_idx: Tensor) -> Tensor:
        z = torch.zeros(*top_acts.shape[:-1], self.num_latents, dtype=self.W_dec.dtype, device=top_acts.device)
        return z.scatter(-1, top_idx, top_acts.to(z.dtype))

    def decode_dense(self, z: Tensor, x: Tensor) -> Tensor:
        out = z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            out = out + x.to(self.W_skip.dtype) @ self.W_skip.T
        return out

    def reconstruct(self, x: Tensor) -> Tensor:
        """The coder's own output for input x (the `coder` condition)."""
        return self.decode_dense(self.code(x), x)


_EXPECT = ("a coder folder holding cfg.json and sae.safetensors (sparsify) or cfg.json and "
           "sae_weights.safetensors (SAELens)")
SAELENS_WEIGHTS = "sae_weights.safetensors"


def is_saelens_folder(folder: Path) -> bool:
    """SAELens saves `sae_weights.safetensors` where sparsify saves `sae.safetensors`."""
    return (Path(folder) / SAELENS_WEIGHTS).is_file() and not (Path(folder) / "sae.safetensors").is_file()


def read_cfg(folder: Path) -> tuple[dict, int]:
    """The coder's cfg.json, checked, and its number of latents; cheap (no weights are read)."""
    folder = Path(folder)
    if is_saelens_folder(folder):
        from harness.model.saelens import read_saelens_cfg

        cfg = read_saelens_cfg(folder)
        return cfg, cfg["d_sae"]
    cfg = read_json_cfg(folder)
    cfg_path = folder / "cfg.json"
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise HarnessError(f"{cfg_path}: activation {activation!r} is not supported; the harness scores "
                           "TopK coders only (activation = \"topk\")")
    for key in ("d_in", "k"):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool) or cfg[key] <= 0:
            raise HarnessError(f"{cfg_path}: {key!r} must be a positive integer, got {cfg.get(key)!r}")
    # sparsify's rule: num_latents == 0 means d_in * expansion_factor
    n, ef = cfg.get("num_latents"), cfg.get("expansion_factor", 32)
    for key, v in (("num_latents", n), ("expansion_factor", ef)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise HarnessError(f"{cfg_path}: {key!r} must be a non-negative integer, got {v!r}")
    return cfg, n or cfg["d_in"] * ef


def read_json_cfg(folder: Path) -> dict:
    """The folder's cfg.json as a JSON object, or one line saying what is wrong with it."""
    cfg_path = folder / "cfg.json"
    if not folder.is_dir():
        raise HarnessError(f"coder folder {folder} does not exist: point the task's [coder] path at {_EXPECT}")
    if not cfg_path.is_file():
        raise HarnessError(f"{cfg_path} is missing: the coder folder must be {_EXPECT}; restore it or rebuild the task")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise HarnessError(f"{cfg_path} is not valid JSON ({e}): restore the coder's cfg.json") from None
    if not isinstance(cfg, dict):
        raise HarnessError(f"{cfg_path} must hold a JSON object (the coder's configuration)")
    return cfg


def topk_dense(z: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of each row (ties: torch.topk's choice), zero the rest."""
    if k >= z.shape[-1]:
        return z.clone()
    values, indices = torch.topk(z, k, dim=-1, sorted=False)
    return torch.zeros_like(z).scatter(-1, indices, values)
