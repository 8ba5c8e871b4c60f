"""Reference transformers engine: every (context, explanation) pair is one full prompt.

Slow but simple; the prefix engine and the vLLM backend are checked against it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from harness.simulate.base import Progress, SimContext, check_pairs, digits_from_logits
from harness.simulate.prompt import digit_token_ids, get_builder


class TorchSimulatorBase:
    name = "transformers"

    def __init__(self, model, tokenizer, prompt_version: str, max_chars: int, model_key: str,
                 batch_size: int = 16):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompt_version = prompt_version
        self.max_chars = int(max_chars)
        self.model_key = model_key
        self.batch_size = max(1, int(batch_size))
        self.builder = get_builder(tokenizer, prompt_version, max_chars)
        self.digit_ids = digit_token_ids(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self.device = next(model.parameters()).device

    def _empty(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((0, 10), np.float32), np.zeros(0, np.float32)


class PlainSimulator(TorchSimulatorBase):
    name = "transformers-plain"

    @torch.inference_mode()
    def predict(self, contexts: Sequence[SimContext], explanations: Sequence[str],
                pairs: Sequence[tuple[int, int]], progress: Progress | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        pairs = check_pairs(contexts, explanations, pairs)
        if not len(pairs):
            return self._empty()
        prompts = [
            self.builder.prefix(contexts[c].text, contexts[c].last_token) + self.builder.suffix(explanations[e])
            for c, e in pairs
        ]
        probs = np.zeros((len(pairs), 10), np.float32)
        mass = np.zeros(len(pairs), np.float32)
        # Length-sorted batches waste less on padding; results go back to their rows.
        order = np.argsort([len(p) for p in prompts], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = [prompts[i] for i in rows]
            width = max(len(p) for p in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, p in enumerate(batch):
                ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p):] = 1
            # Left padding: real tokens must still be numbered 0.. from their own first token.
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=position_ids.to(self.device), use_cache=False, logits_to_keep=1)
            p, m = digits_from_logits(out.logits[:, -1, :], self.digit_ids)
            probs[rows], mass[rows] = p, m
            if progress is not None:
                progress(len(rows))
        return probs, mass
