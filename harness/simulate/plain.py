"""Reference transformers engine: every (context, explanation) pair is one full prompt.

Slow but simple; the prefix engine and the vLLM backend are checked against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from harness.simulate.base import Engine, Progress, SimContext, answers_from_logits, readout_dtype

# Config fields under which some families post-process logits inside their *ForCausalLM.forward; with
# any of them set, the head must be the model's own forward, not a bare lm_head.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def plain_head(model) -> nn.Linear | None:
    """The model's LM head when logits are exactly `lm_head(hidden)`, else None."""
    head = model.get_output_embeddings()
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    plain = all(getattr(cfg, a, None) in (None, 1, 1.0) for a in _LOGIT_POSTPROCESSING)
    return head if isinstance(head, nn.Linear) and plain else None


class TorchSimulatorBase(Engine):
    name = "transformers"

    def __init__(self, model, tokenizer, prompt_version: str, max_chars: int, model_key: str,
                 batch_size: int = 16):
        self.model = model.eval()
        self._prompts_for(tokenizer, prompt_version, max_chars, model_key)
        self.batch_size = max(1, int(batch_size))
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self.device = next(model.parameters()).device
        self.base = model.base_model
        self.lm_head = plain_head(model)
        if self.lm_head is not None:
            # The answer rows of the head in float32 (float64 for a float64 model): a bfloat16 logit keeps ~3
            # significant digits, which rounds yes/no log-odds to steps of 0.125 and ties thousands of predictions.
            acc = readout_dtype(self.lm_head.weight.dtype)
            w = self.lm_head.weight[self.answer_ids].to(acc)
            b = self.lm_head.bias
            self._answer_w = w
            self._answer_b = b[self.answer_ids].to(acc) if b is not None else None

    def read_out(self, hidden: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Final hidden states [n, d] at the answer position → (answer probs [n, K], answer mass [n]).

        Answer logits are computed in float32 (float64 for a float64 model) from the hidden state; the
        full-vocabulary logits (for the answer mass, a diagnostic) in the model's dtype.
        """
        assert self.lm_head is not None
        acc = self._answer_w.dtype
        answer = hidden.to(acc) @ self._answer_w.T
        if self._answer_b is not None:
            answer = answer + self._answer_b
        full = self.lm_head(hidden).to(acc)
        probs = torch.softmax(answer, dim=-1)
        log_mass = torch.logsumexp(answer, dim=-1) - torch.logsumexp(full, dim=-1)
        return probs.cpu().numpy().astype(np.float32), torch.exp(log_mass).clamp(max=1.0).cpu().numpy().astype(np.float32)


class PlainSimulator(TorchSimulatorBase):
    name = "transformers-plain"

    @torch.inference_mode()
    def _predict(self, contexts: Sequence[SimContext], explanations: Sequence[str], pairs: np.ndarray,
                 progress: Progress | None) -> tuple[np.ndarray, np.ndarray]:
        prompts = [self.full_prompt(contexts[c], explanations[int(e)]) for c, e in pairs]
        probs = np.zeros((len(pairs), len(self.answer_ids)), np.float32)
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
            kw = dict(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                      position_ids=position_ids.to(self.device), use_cache=False)
            if self.lm_head is not None:
                p, m = self.read_out(self.base(**kw).last_hidden_state[:, -1])
            else:
                p, m = answers_from_logits(self.model(**kw, logits_to_keep=1).logits[:, -1, :], self.answer_ids)
            probs[rows], mass[rows] = p, m
            if progress is not None:
                progress(len(rows))
        return probs, mass
