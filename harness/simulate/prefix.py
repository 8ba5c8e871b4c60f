"""Shared-prefix transformers engine: each context's prompt prefix runs once, its suffixes run in batches.

Per predict call the instruction head (identical for every context) is run once; per context the
context tokens are appended to a copy of that cache; per batch of explanations the context's KV cache
is repeated along the batch and the right-padded suffixes run against it. Only the hidden state at
each row's last real token goes through the LM head.
"""

from __future__ import annotations

import copy
import inspect
from typing import Sequence

import numpy as np
import torch
from torch import nn

from harness.simulate.base import Progress, SimContext, check_pairs, context_groups, digits_from_logits
from harness.simulate.plain import TorchSimulatorBase

# Config fields under which some families post-process logits inside their *ForCausalLM.forward; with
# any of them set, the head must be the model's own forward, not a bare lm_head.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _repeat_cache(cache, n: int):
    """A cache holding `n` copies of a batch-1 cache, leaving the original untouched.

    Plain dynamic layers get expanded views (no copy: the suffix pass concatenates onto them, which
    materialises the keys once); any other layer type gets a deep copy and the library's own repeat.
    """
    from transformers.cache_utils import DynamicLayer

    if all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        out = copy.copy(cache)
        out.layers = []
        for layer in cache.layers:
            new = copy.copy(layer)
            keys = getattr(layer, "keys", None)
            if getattr(layer, "is_initialized", False) and keys is not None and keys.numel():
                new.keys = layer.keys.expand(n, *layer.keys.shape[1:])
                new.values = layer.values.expand(n, *layer.values.shape[1:])
            out.layers.append(new)
        return out
    out = copy.deepcopy(cache)
    out.batch_repeat_interleave(n)
    return out


class PrefixSimulator(TorchSimulatorBase):
    name = "transformers-prefix"

    def __init__(self, model, tokenizer, prompt_version: str, max_chars: int, model_key: str,
                 batch_size: int = 16):
        super().__init__(model, tokenizer, prompt_version, max_chars, model_key, batch_size)
        self.base = model.base_model
        head = model.get_output_embeddings()
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        plain_head = all(getattr(cfg, a, None) in (None, 1, 1.0) for a in _LOGIT_POSTPROCESSING)
        self.lm_head = head if isinstance(head, nn.Linear) and plain_head else None
        self._head_ids = self.builder.head_ids
        self._head_kv = None
        # transformers renamed `past_key_values` to `cache` during 5.x; speak whichever this one takes.
        params = inspect.signature(self.base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        params = inspect.signature(model.forward).parameters
        self._model_cache_kw = "cache" if "cache" in params else "past_key_values"

    def _run(self, ids: torch.Tensor, cache, start: int, attention_mask=None):
        n, s = ids.shape
        pos = torch.arange(start, start + s, device=self.device).unsqueeze(0).expand(n, s)
        out = self.base(input_ids=ids, attention_mask=attention_mask, position_ids=pos, use_cache=True,
                        **{self._cache_kw: cache})
        return out.last_hidden_state, _returned_cache(out)

    def _head_cache(self):
        """KV of the instruction head, computed once per simulator: every context extends a copy."""
        if not self._head_ids:
            return None
        if self._head_kv is None:
            ids = torch.tensor([self._head_ids], dtype=torch.long, device=self.device)
            self._head_kv = self._run(ids, None, 0)[1]
        return self._head_kv

    def _suffix_logits(self, cache, prefix_len: int, suffixes: list[list[int]]) -> torch.Tensor:
        n = len(suffixes)
        width = max(len(s) for s in suffixes)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        smask = torch.zeros((n, width), dtype=torch.long)
        for i, s in enumerate(suffixes):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            smask[i, :len(s)] = 1
        ids, smask = ids.to(self.device), smask.to(self.device)
        attn = torch.cat([torch.ones((n, prefix_len), dtype=torch.long, device=self.device), smask], dim=1)
        batch_cache = _repeat_cache(cache, n)
        last = smask.sum(dim=1) - 1
        rows = torch.arange(n, device=self.device)
        if self.lm_head is not None:
            hidden = self._run(ids, batch_cache, prefix_len, attn)[0]
            return self.lm_head(hidden[rows, last])
        pos = (prefix_len + torch.arange(width, device=self.device)).unsqueeze(0).expand(n, width)
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
                         **{self._model_cache_kw: batch_cache})
        return out.logits[rows, last]

    @torch.inference_mode()
    def predict(self, contexts: Sequence[SimContext], explanations: Sequence[str],
                pairs: Sequence[tuple[int, int]], progress: Progress | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        pairs = check_pairs(contexts, explanations, pairs)
        if not len(pairs):
            return self._empty()
        probs = np.zeros((len(pairs), 10), np.float32)
        mass = np.zeros(len(pairs), np.float32)
        head_cache = self._head_cache()
        n_head = len(self._head_ids)
        for c, rows in context_groups(pairs):
            prefix = self.builder.prefix(contexts[c].text, contexts[c].last_token)
            if prefix[:n_head] != self._head_ids:  # cannot happen with PromptBuilder; guards a custom one
                raise RuntimeError("prompt prefix does not start with the template head")
            ctx_ids = torch.tensor([prefix[n_head:]], dtype=torch.long, device=self.device)
            cache = copy.deepcopy(head_cache) if head_cache is not None else None
            cache = self._run(ctx_ids, cache, n_head)[1]
            suffixes = [self.builder.suffix(explanations[e]) for e in pairs[rows, 1]]
            # Similar lengths in one batch waste less on padding.
            order = np.argsort([len(s) for s in suffixes], kind="stable")
            for start in range(0, len(order), self.batch_size):
                sel = order[start:start + self.batch_size]
                logits = self._suffix_logits(cache, len(prefix), [suffixes[i] for i in sel])
                p, m = digits_from_logits(logits, self.digit_ids)
                probs[rows[sel]], mass[rows[sel]] = p, m
                if progress is not None:
                    progress(len(sel))
        return probs, mass
