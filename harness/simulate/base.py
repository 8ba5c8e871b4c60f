"""What every simulator backend shares: the context record, the protocol, and digit read-out."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from harness.errors import HarnessError
from harness.simulate.prompt import PromptBuilder, answer_token_ids, get_builder

DIGITS = np.arange(10, dtype=np.float64)

Progress = Callable[[int], None]   # called with the number of pairs just finished
# (context index, explanation index) rows: an (n, 2) integer array or any sequence of pairs.
Pairs = Sequence[tuple[int, int]] | np.ndarray


@dataclass(frozen=True)
class SimContext:
    """One context as the simulator sees it.

    `text` is the decoded window *without* its last token; `last_token` is that token's text (the
    prompt appends it inside the markers). `context_id` must identify the tokens, e.g. "test:17" plus
    the task hash, because the prediction store keys on it.
    """
    context_id: str
    text: str
    last_token: str


class Simulator(Protocol):
    name: str            # backend name, e.g. "transformers-prefix"
    model_key: str       # ModelRef.key()
    prompt_version: str

    def predict(self, contexts: Sequence[SimContext], explanations: Sequence[str],
                pairs: Pairs, progress: Progress | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """pairs are (context index, explanation index). Returns (probs [n, K] float32 renormalised over
        the prompt's K answer tokens, answer mass [n] float32: their total probability before renormalising)."""
        ...


class Engine:
    """What every engine's `predict` does before its own work: it owns the prompt builder and the answer
    tokens, checks the pairs, answers an empty request, and hands the checked (n, 2) pairs to `_predict`."""

    name = "engine"
    tokenizer: object
    prompt_version: str
    max_chars: int
    model_key: str
    builder: PromptBuilder
    answer_ids: list[int]

    def _prompts_for(self, tokenizer, prompt_version: str, max_chars: int, model_key: str) -> None:
        self.tokenizer = tokenizer
        self.prompt_version = prompt_version
        self.max_chars = int(max_chars)
        self.model_key = model_key
        self.builder = get_builder(tokenizer, prompt_version, max_chars)
        self.answer_ids = answer_token_ids(tokenizer, self.builder.template.answers)

    def predict(self, contexts: Sequence[SimContext], explanations: Sequence[str],
                pairs: Pairs, progress: Progress | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        checked = check_pairs(contexts, explanations, pairs)
        if not len(checked):
            return np.zeros((0, len(self.answer_ids)), np.float32), np.zeros(0, np.float32)
        return self._predict(contexts, explanations, checked, progress)

    def _predict(self, contexts: Sequence[SimContext], explanations: Sequence[str], pairs: np.ndarray,
                 progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def full_prompt(self, context: SimContext, explanation: str) -> list[int]:
        """The whole prompt's token ids, as the engines that do not share prefixes send it."""
        return self.builder.prefix(context.text, context.last_token) + self.builder.suffix(explanation)


def expected_value(probs: np.ndarray) -> np.ndarray:
    """Σ d·P(d) per row: the simulator's prediction p̂ (§3)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[-1] != 10:
        raise ValueError(f"expected digit probabilities with 10 columns, got shape {probs.shape}")
    return (probs @ DIGITS).astype(np.float32)


def explanation_sha(explanation: str) -> str:
    return hashlib.sha256(explanation.encode("utf-8")).hexdigest()


def check_pairs(contexts: Sequence, explanations: Sequence, pairs: Pairs) -> np.ndarray:
    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(arr):
        if arr.min() < 0 or arr[:, 0].max() >= len(contexts) or arr[:, 1].max() >= len(explanations):
            raise HarnessError(
                f"simulator pairs index outside {len(contexts)} contexts / {len(explanations)} explanations"
            )
    return arr


def readout_dtype(dtype):
    """The dtype answer logits, softmaxes and attention scores are computed in: float32, or float64 for a
    float64 model. A float64 model exists for outputs that are the same on every CPU (the tiny test task):
    its values rounded to float32 do not depend on the kernels' summation order, but a float32 step after
    it (a softmax, a read-out GEMM) would put that dependence back."""
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def answers_from_logits(logits, answer_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Full-vocabulary logits [n, V] → (answer probs renormalised [n, K], answer mass [n]), in float32.

    Renormalising through a softmax over the K answer logits is exact and cannot underflow the way
    dividing K tiny probabilities can.
    """
    import torch

    logits = logits.to(readout_dtype(logits.dtype))
    answer_logits = logits[:, list(answer_ids)]
    probs = torch.softmax(answer_logits, dim=-1)
    log_mass = torch.logsumexp(answer_logits, dim=-1) - torch.logsumexp(logits, dim=-1)
    return probs.cpu().numpy().astype(np.float32), torch.exp(log_mass).cpu().numpy().astype(np.float32)


def answers_from_logprobs(logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Answer log-probabilities [n, K] (−inf where the server did not return one) → (probs, mass).

    A row with no answer token at all cannot be renormalised: it gets all its weight on the first answer
    ("0" or "No": unrelated, the prompts' default) and answer mass 0, which the caller reports.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    top = lp.max(axis=1, keepdims=True)
    finite = np.isfinite(top[:, 0])
    safe_top = np.where(np.isfinite(top), top, 0.0)
    w = np.exp(lp - safe_top)
    total = w.sum(axis=1, keepdims=True)
    probs = np.where(finite[:, None], w / np.where(total > 0, total, 1.0), 0.0)
    probs[~finite, 0] = 1.0
    mass = np.where(finite, np.exp(safe_top[:, 0]) * total[:, 0], 0.0)
    return probs.astype(np.float32), mass.astype(np.float32)


def context_groups(pairs: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(context index, row numbers into pairs) in first-appearance order of the contexts."""
    if not len(pairs):
        return []
    order = np.argsort(pairs[:, 0], kind="stable")
    ctx_sorted = pairs[order, 0]
    cuts = np.flatnonzero(np.diff(ctx_sorted)) + 1
    groups = [(int(pairs[rows[0], 0]), rows) for rows in np.split(order, cuts)]
    groups.sort(key=lambda g: int(g[1][0]))
    return groups
