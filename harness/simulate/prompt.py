"""Versioned simulator prompts, tokenised segment by segment so untrusted text cannot forge structure.

A prompt is `prefix + suffix`:

- prefix = [chat template head + instructions][context with its last token marked][text up to the explanation]
- suffix = [explanation][what follows it: the end of the user turn + assistant turn opening]

Two read-outs exist. `v1` (the paper's) asks for a digit 0-9 and scores Σ d·P(d) over the ten digit tokens.
`yn1` asks whether the marked token matches the explanation and scores log P("Yes") − log P("No") at the
first assistant token: a 1.5B model follows a yes/no question where it hedges on a 0-9 scale
(docs/findings.md). Its question stands *before* the explanation, so each prediction's suffix is only the
explanation and the turn's end (the cost of a prediction in the prefix engine is its suffix length).

Every latent scored on a context shares that context's prefix, which is what lets the prefix engine
and vLLM's prefix cache run it once. The head (everything before the context) is the same for every
context, so engines may share it too.

The chat template is rendered once with sentinel strings in place of the context and the explanation
and cut at the sentinels. Template pieces are tokenised with special tokens recognised; the context
and the explanation are tokenised with `split_special_tokens=True`, so "<|im_end|>" written inside an
explanation reaches the model as plain characters, never as the control token. Because the pieces are
tokenised separately, the prefix/suffix split is a token boundary of the full prompt by construction.
"""

from __future__ import annotations

import functools
import re
import weakref
from dataclasses import dataclass

from harness.errors import HarnessError


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    instructions: str          # system turn (merged into the user turn where the template has no system role)
    user: str                  # holds "{context}" and "{explanation}" exactly once each, context first
    # The answer tokens read at the first assistant position, and how their probabilities become one score:
    # "expected-digit" (Σ d·P(d) over answers "0".."9") or "log-odds" (log P(answers[1]) − log P(answers[0])).
    answers: tuple[str, ...] = tuple("0123456789")
    score: str = "expected-digit"
    open_mark: str = "<<"
    close_mark: str = ">>"
    # What a marker written by someone else becomes: it must not be mistaken for ours.
    open_alt: str = "\u2039\u2039"
    close_alt: str = "\u203a\u203a"


_V1_INSTRUCTIONS = (
    "You rate how strongly a feature of a language model is active on one token of a text.\n"
    "You will see a text whose final token is wrapped in << and >>, followed by a short explanation "
    "of what the feature responds to. Judge only the marked token, using the words before it as context.\n"
    "Reply with one digit from 0 to 9:\n"
    "0 = the explanation has nothing to do with the marked token. Most tokens get 0.\n"
    "1-3 = a weak or doubtful match; 4-6 = a partial match; 7-8 = a strong match.\n"
    "9 = only when the marked token fits the explanation exactly.\n"
    "If you hesitate between two digits, pick the lower one. Write the digit and nothing else."
)

# Segment borders sit right after a newline or a quote so that tokenising pieces separately cuts where a
# byte-level BPE pre-tokeniser would cut anyway.
_V1_USER = (
    "Text:\n{context}\n\n"
    "Explanation: \"{explanation}\"\n\n"
    "How strongly is this feature present on the marked token? Answer with a single digit (0-9)."
)

_YN1_INSTRUCTIONS = (
    "You check whether a feature of a language model fires on one token of a text. The feature is "
    "described by an explanation written by someone else. The token to judge is the last one of the text, "
    "wrapped in << and >>; the words before it are its context. Answer Yes if the marked token is the kind "
    "of token the explanation describes, in this context; otherwise answer No. Most tokens do not match. "
    "Answer with one word: Yes or No."
)

_YN1_USER = (
    "Text:\n{context}\n\n"
    "Does the marked token match the explanation below? Answer Yes or No.\n\n"
    "Explanation: \"{explanation}\""
)

PROMPT_VERSIONS: dict[str, PromptTemplate] = {
    "v1": PromptTemplate(version="v1", instructions=_V1_INSTRUCTIONS, user=_V1_USER),
    "yn1": PromptTemplate(version="yn1", instructions=_YN1_INSTRUCTIONS, user=_YN1_USER,
                          answers=("No", "Yes"), score="log-odds"),
}

# Alphanumeric so that no chat template's filters (trim, escaping) alter them.
_CTX_SENTINEL = "HARNESSCONTEXTSENTINEL9F27"
_EXP_SENTINEL = "HARNESSEXPLANATIONSENTINEL9F27"

_WS_RUN = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class PromptParts:
    prefix_ids: list[int]
    suffix_ids: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prefix_ids + self.suffix_ids


def get_template(version: str) -> PromptTemplate:
    try:
        return PROMPT_VERSIONS[version]
    except KeyError:
        raise HarnessError(
            f"unknown prompt version {version!r}: known versions are {', '.join(sorted(PROMPT_VERSIONS))}"
        ) from None


def special_token_ids(tokenizer) -> set[int]:
    """Ids of every added/special token: what untrusted text must never produce."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids.update(int(i) for i in (getattr(tokenizer, "added_tokens_decoder", {}) or {}))
    return ids


def answer_token_ids(tokenizer, answers: tuple[str, ...] = tuple("0123456789")) -> list[int]:
    """Ids of the answer tokens ("0".."9", or "No"/"Yes") as the assistant would emit them first in its turn."""
    out = []
    for d in answers:
        ids = tokenizer.encode(d, add_special_tokens=False)
        if len(ids) == 1:
            out.append(int(ids[0]))
            continue
        # SentencePiece tokenisers prepend "▁" when encoding a lone string; the bare piece is what
        # follows a newline-ended assistant header.
        tid = tokenizer.convert_tokens_to_ids(d)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            out.append(tid)
            continue
        raise HarnessError(
            f"the simulator's tokenizer encodes the answer {d!r} as {len(ids)} tokens {ids}: "
            f"this prompt needs each of {', '.join(answers)} to be one token; use another simulator model"
        )
    if len(set(out)) != len(answers):
        raise HarnessError(f"the simulator's tokenizer maps two answers to the same token ({out}); use another model")
    return out


def digit_token_ids(tokenizer) -> list[int]:
    """Ids of the tokens "0".."9" (the `v1` answers)."""
    return answer_token_ids(tokenizer, tuple("0123456789"))


def prompt_score(version: str, probs):
    """One score per row from answer probabilities [n, len(answers)] renormalised over the answers.

    expected-digit: Σ d·P(d), on 0..9. log-odds: log P(yes) − log P(no), any real number (the logit
    difference of the two answer tokens, so it keeps its precision where one answer has almost all mass).
    Quantile normalisation is rank-based per latent, so any score monotone in the simulator's belief serves.
    """
    import numpy as np

    template = get_template(version)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(template.answers):
        raise ValueError(f"prompt {version} reads {len(template.answers)} answer probabilities, got shape {p.shape}")
    if template.score == "expected-digit":
        return (p @ np.arange(len(template.answers), dtype=np.float64)).astype(np.float32)
    tiny = np.finfo(np.float32).tiny   # float32 probabilities underflow at ~1e-38: log-odds then saturate near ±87
    return (np.log(np.maximum(p[:, 1], tiny)) - np.log(np.maximum(p[:, 0], tiny))).astype(np.float32)


def clean_explanation(explanation, max_chars: int, template: PromptTemplate) -> str:
    """Explanation text as it appears in the prompt: one line, no markers, no closing quote."""
    if not isinstance(explanation, str):
        raise HarnessError(f"an explanation must be a string, got {type(explanation).__name__}")
    if len(explanation) > max_chars:
        raise HarnessError(
            f"explanation is {len(explanation)} characters, over the task's limit of {max_chars}: "
            f"shorten it (starts {explanation[:40]!r})"
        )
    # Newlines would let it open a fake section or turn; the quote would let it close its delimiters.
    text = _WS_RUN.sub(" ", _CONTROL.sub(" ", explanation)).strip()
    text = text.replace(template.open_mark, template.open_alt).replace(template.close_mark, template.close_alt)
    return text.replace('"', "'")


def mark_context(context_text: str, last_token_text: str, template: PromptTemplate) -> str:
    """`context_text` is the window before its last token; the last token is appended inside the marks."""

    def defuse(s: str) -> str:
        return s.replace(template.open_mark, template.open_alt).replace(template.close_mark, template.close_alt)

    core = last_token_text.lstrip()
    lead = last_token_text[: len(last_token_text) - len(core)]
    if not core:  # a whitespace-only token is marked as it is
        core, lead = last_token_text, ""
    return defuse(context_text) + lead + template.open_mark + defuse(core) + template.close_mark


def _render(tokenizer, template: PromptTemplate) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise HarnessError(
            "the simulator's tokenizer has no chat template: the simulator must be an instruction-tuned "
            "model whose tokenizer_config.json defines chat_template"
        )
    user = template.user.replace("{context}", _CTX_SENTINEL).replace("{explanation}", _EXP_SENTINEL)
    try:
        return tokenizer.apply_chat_template(
            [{"role": "system", "content": template.instructions}, {"role": "user", "content": user}],
            add_generation_prompt=True, tokenize=False,
        )
    except Exception:
        # Some templates (Gemma's) reject a system turn: the instructions then open the user turn.
        try:
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": template.instructions + "\n\n" + user}],
                add_generation_prompt=True, tokenize=False,
            )
        except Exception as e:
            raise HarnessError(f"the simulator's chat template failed to render: {e}") from e


@dataclass(frozen=True)
class _Pieces:
    head: tuple[int, ...]     # template + instructions, up to the context
    middle: tuple[int, ...]   # between the context and the explanation
    tail: tuple[int, ...]     # after the explanation: question, end of turn, assistant opening


def _split_template(tokenizer, template: PromptTemplate) -> _Pieces:
    rendered = _render(tokenizer, template)
    if rendered.count(_CTX_SENTINEL) != 1 or rendered.count(_EXP_SENTINEL) != 1:
        raise HarnessError("the simulator's chat template dropped or repeated the message content; use another model")
    head, rest = rendered.split(_CTX_SENTINEL)
    middle, tail = rest.split(_EXP_SENTINEL)
    if not tail:
        raise HarnessError("the simulator's chat template ends with the explanation; cannot build a suffix")

    def trusted(s: str) -> tuple[int, ...]:
        return tuple(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else ()

    return _Pieces(trusted(head), trusted(middle), trusted(tail))


_PIECES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pieces_for(tokenizer, version: str) -> _Pieces:
    try:
        per_tok = _PIECES.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weak-referenced: no cache
        return _split_template(tokenizer, get_template(version))
    if version not in per_tok:
        per_tok[version] = _split_template(tokenizer, get_template(version))
    return per_tok[version]


class PromptBuilder:
    """Cheap prompt construction: template pieces once, each context once, each explanation once."""

    def __init__(self, tokenizer, version: str, max_chars: int, cache_size: int = 1 << 16):
        self.tokenizer = tokenizer
        self.version = version
        self.template = get_template(version)
        self.max_chars = int(max_chars)
        self.pieces = _pieces_for(tokenizer, version)
        # unk is excluded: a SentencePiece model may legitimately map a rare character to it.
        self._special = special_token_ids(tokenizer) - {getattr(tokenizer, "unk_token_id", None)}
        self._prefix = functools.lru_cache(maxsize=cache_size)(self._build_prefix)
        self._suffix = functools.lru_cache(maxsize=cache_size)(self._build_suffix)

    @property
    def head_ids(self) -> list[int]:
        """The part of every prefix before the context (identical for all contexts)."""
        return list(self.pieces.head)

    def untrusted_ids(self, text: str) -> tuple[int, ...]:
        if not text:
            return ()
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if self._special.intersection(ids):
            # Non-special added tokens (e.g. "<think>") are still matched whole; break each up.
            ids = self._split_added(text)
        return tuple(ids)

    def _split_added(self, text: str) -> list[int]:
        contents = sorted({t.content for t in self.tokenizer.added_tokens_decoder.values() if t.content},
                          key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(c) for c in contents))
        out: list[int] = []
        pos = 0
        for m in pattern.finditer(text):
            out += self.tokenizer(text[pos:m.start()], add_special_tokens=False,
                                  split_special_tokens=True)["input_ids"] if m.start() > pos else []
            for ch in m.group(0):
                out += self.tokenizer(ch, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            pos = m.end()
        if pos < len(text):
            out += self.tokenizer(text[pos:], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if self._special.intersection(out):
            raise HarnessError("the simulator's tokenizer turns plain text into a control token; use another model")
        return out

    def _build_prefix(self, context_text: str, last_token_text: str) -> tuple[int, ...]:
        marked = mark_context(context_text, last_token_text, self.template)
        return self.pieces.head + self.untrusted_ids(marked) + self.pieces.middle

    def _build_suffix(self, explanation: str) -> tuple[int, ...]:
        text = clean_explanation(explanation, self.max_chars, self.template)
        return self.untrusted_ids(text) + self.pieces.tail

    def prefix(self, context_text: str, last_token_text: str) -> list[int]:
        return list(self._prefix(context_text, last_token_text))

    def suffix(self, explanation: str) -> list[int]:
        return list(self._suffix(explanation))

    def build(self, context_text: str, last_token_text: str, explanation: str) -> PromptParts:
        return PromptParts(self.prefix(context_text, last_token_text), self.suffix(explanation))


_BUILDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_builder(tokenizer, version: str, max_chars: int) -> PromptBuilder:
    try:
        per_tok = _BUILDERS.setdefault(tokenizer, {})
    except TypeError:
        return PromptBuilder(tokenizer, version, max_chars)
    key = (version, int(max_chars))
    if key not in per_tok:
        per_tok[key] = PromptBuilder(tokenizer, version, max_chars)
    return per_tok[key]


def build_prompt(tokenizer, version: str, context_text: str, last_token_text: str, explanation: str,
                 max_chars: int) -> PromptParts:
    """One prompt; `context_text` is the window *before* its last token, `last_token_text` that token."""
    return get_builder(tokenizer, version, max_chars).build(context_text, last_token_text, explanation)
