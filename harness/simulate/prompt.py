"""Versioned simulator prompts: the model's own tokenisation of the prompt text, with untrusted text
unable to forge structure, split into a per-context prefix and a per-explanation suffix.

Tokenisation (`v2`, `yn2`, `yn3`). The ids are what the simulator's tokenizer makes of the whole rendered prompt
(`tokenizer(text, add_special_tokens=False)`, as `apply_chat_template(tokenize=True)` does), with one
deliberate difference: a special token's text written inside the context or the explanation
("<|im_end|>") stays plain characters. Hugging Face tokenizers cut the text at added tokens *before*
normalising and pre-tokenising, so the canonical ids are: the template's own special tokens, and between
them each run of text tokenised as one string. Here the runs are tokenised with
`split_special_tokens=True` (non-special added tokens such as "<think>", which that flag does not cover,
are broken up character by character); the template's pieces are never tokenised apart from their
neighbours. Earlier versions (`v1`, `yn1`) tokenised head, context, middle, explanation and tail
separately; at two borders Qwen2.5's byte-level BPE merges across such a cut (`>>` + `\\n\\n`, and `'` +
`"` at the end of an explanation), so their ids were never the model's own. They stay here, tokenised as
before, so that their results reproduce.

Prefix and suffix. A prompt is `prefix + suffix`, and the two must concatenate to the canonical ids:

- prefix = [template head, through its last special token before the context]
           [rest of that run: "user\\nText:\\n" + marked context + the trusted text up to the split]
- suffix = [from the split: ' "' + explanation + the rest of its run][the template's closing tokens]

The split sits inside trusted text, right after "Explanation:" and before the space that opens the
quoted explanation. A byte-level BPE pre-tokeniser (the regex of GPT-2, GPT-NeoX, Llama-3/SmolLM2 and
Qwen2) always ends a piece there: ':' is followed by a space, and no rule joins punctuation to a
following space. Tokens never cross pieces, so the context's run can be tokenised up to the split and the
explanation's run from it, each cached, and the concatenation is the whole run's tokenisation. That rule
is checked, not assumed: each context's run is tokenised once more with the split's next characters
appended, and each explanation's run starts from the trusted text before the split; a tokenizer that
merges across the split fails with an error rather than scoring with non-canonical ids. (Cutting before
the explanation itself would not do: ' "' joins with an explanation that starts with punctuation.)

Read-outs. `v1`/`v2` (the paper's) ask for a digit 0-9 and score Σ d·P(d) over the ten digit tokens.
`yn1`/`yn2`/`yn3` ask whether the marked token matches the explanation and score log P("Yes") − log P("No") at
the first assistant token: a 1.5B model follows a yes/no question where it hedges on a 0-9 scale
(docs/findings.md). Its question stands *before* the explanation, so each prediction's suffix is only the
explanation and the turn's end (the cost of a prediction in the prefix engine is its suffix length).

Every latent scored on a context shares that context's prefix, which is what lets the prefix engine
and vLLM's prefix cache run it once. The head is the same for every context, so engines may share it too.
"""

from __future__ import annotations

import dataclasses
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
    # The trusted text just before "{explanation}" that opens each prediction's suffix: the prompt is cut
    # in front of it, where a byte-level pre-tokeniser always ends a piece (module docstring). None: the
    # piecewise tokenisation of v1/yn1, kept so that their results reproduce.
    suffix_lead: str | None = None


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

# v1/yn1 were tokenised in pieces on the belief that cutting after a newline or a quote matches a byte-level
# BPE pre-tokeniser's cuts; it does not (module docstring). v2/yn2/yn3 keep the text and tokenise it whole.
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

# yn3: yn2 without the question in the user turn (the instructions already ask it, last). Everything that does
# not depend on the context then sits in the instruction head, which engines compute once per run: each
# context's own prefix is its text and ~5 tokens instead of ~25 more (about 13% of the CE task's tokens).
_YN3_USER = (
    "Text:\n{context}\n\n"
    "Explanation: \"{explanation}\""
)

_V1 = PromptTemplate(version="v1", instructions=_V1_INSTRUCTIONS, user=_V1_USER)
_YN1 = PromptTemplate(version="yn1", instructions=_YN1_INSTRUCTIONS, user=_YN1_USER,
                      answers=("No", "Yes"), score="log-odds")

PROMPT_VERSIONS: dict[str, PromptTemplate] = {
    "v1": _V1,
    "yn1": _YN1,
    # Same text as v1/yn1; the ids are the tokenizer's own tokenisation of it.
    "v2": dataclasses.replace(_V1, version="v2", suffix_lead=' "'),
    "yn2": dataclasses.replace(_YN1, version="yn2", suffix_lead=' "'),
    "yn3": dataclasses.replace(_YN1, version="yn3", user=_YN3_USER, suffix_lead=' "'),
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


def _rendered_parts(tokenizer, template: PromptTemplate) -> tuple[str, str, str]:
    """The rendered prompt as (text before the context, text between context and explanation, text after)."""
    rendered = _render(tokenizer, template)
    if rendered.count(_CTX_SENTINEL) != 1 or rendered.count(_EXP_SENTINEL) != 1:
        raise HarnessError("the simulator's chat template dropped or repeated the message content; use another model")
    head, rest = rendered.split(_CTX_SENTINEL)
    middle, tail = rest.split(_EXP_SENTINEL)
    if not tail:
        raise HarnessError("the simulator's chat template ends with the explanation; cannot build a suffix")
    return head, middle, tail


@dataclass(frozen=True)
class _Pieces:
    """v1/yn1: each piece tokenised on its own (their historical, non-canonical ids)."""
    head: tuple[int, ...]     # template + instructions, up to the context
    middle: tuple[int, ...]   # between the context and the explanation
    tail: tuple[int, ...]     # after the explanation: question, end of turn, assistant opening


def _split_template(tokenizer, template: PromptTemplate) -> _Pieces:
    head, middle, tail = _rendered_parts(tokenizer, template)

    def trusted(s: str) -> tuple[int, ...]:
        return tuple(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else ()

    return _Pieces(trusted(head), trusted(middle), trusted(tail))


def _added_pattern(tokenizer) -> re.Pattern | None:
    contents = sorted({t.content for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
                       if t.content}, key=len, reverse=True)
    return re.compile("|".join(re.escape(c) for c in contents)) if contents else None


def _cut_at_added(tokenizer, text: str) -> list[str | int]:
    """Trusted text as the tokenizer first cuts it: added tokens (as ids) and the runs of text between them.

    The longest match wins at each position, as in the tokenizer's own added-token matcher."""
    pattern = _added_pattern(tokenizer)
    out: list[str | int] = []
    pos = 0
    for m in pattern.finditer(text) if pattern is not None else ():
        if m.start() > pos:
            out.append(text[pos:m.start()])
        out.append(int(tokenizer.convert_tokens_to_ids(m.group(0))))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def _trusted_ids(tokenizer, items: list[str | int]) -> tuple[int, ...]:
    out: list[int] = []
    for it in items:
        out += [it] if isinstance(it, int) else tokenizer(it, add_special_tokens=False)["input_ids"]
    return tuple(out)


@dataclass(frozen=True)
class _Layout:
    """v2/yn2/yn3: the rendered template cut where the tokenizer itself cuts (added tokens) and at the split.

    The context's run is `lead + context + ctx_close`; the explanation's run is `exp_open + suffix_lead +
    explanation + closing`, tokenised whole and cut after `open_ids`. Where no added token separates the two
    (the usual case: both sit in one user message), `ctx_close` and `exp_open` are the same text (context to
    split)."""
    head: tuple[int, ...]       # through the last added token before the context
    lead: str                   # trusted text from there to the context
    ctx_close: str              # trusted text after the context, to the first added token or the split
    between: tuple[int, ...]    # added tokens between context and explanation and the runs between them
    exp_open: str               # trusted text from the last added token (or the context) to the split
    open_ids: tuple[int, ...]   # `exp_open` tokenised alone; in the prefix unless `joined`
    suffix_lead: str            # trusted text from the split to the explanation
    lead_ids: tuple[int, ...]   # `suffix_lead` tokenised after `exp_open`: each context's run is checked with it
    closing: str                # trusted text after the explanation, to the next added token
    tail: tuple[int, ...]       # the rest: added tokens and the runs between them
    joined: bool                # context and explanation share one run


def _layout(tokenizer, template: PromptTemplate) -> _Layout:
    head_text, mid_text, tail_text = _rendered_parts(tokenizer, template)
    lead_text = template.suffix_lead or ""
    if not mid_text.endswith(lead_text):
        raise HarnessError(f"the simulator's chat template altered the text before the explanation "
                           f"({lead_text!r}); use another model")
    mid_items = _cut_at_added(tokenizer, mid_text[: len(mid_text) - len(lead_text)])
    added_at = [i for i, it in enumerate(mid_items) if isinstance(it, int)]
    joined = not added_at
    if joined:
        close = open_ = "".join(mid_items)   # type: ignore[arg-type]  (no ids when joined)
        between: tuple[int, ...] = ()
    else:
        close = mid_items[0] if isinstance(mid_items[0], str) else ""
        open_ = mid_items[-1] if isinstance(mid_items[-1], str) else ""
        between = _trusted_ids(tokenizer, mid_items[1 if close else 0: len(mid_items) - (1 if open_ else 0)])
    head_items = _cut_at_added(tokenizer, head_text)
    last = max((i for i, it in enumerate(head_items) if isinstance(it, int)), default=-1)
    tail_items = _cut_at_added(tokenizer, tail_text)
    first = next((i for i, it in enumerate(tail_items) if isinstance(it, int)), len(tail_items))
    open_ids = _trusted_ids(tokenizer, [open_] if open_ else [])
    both = _trusted_ids(tokenizer, [open_ + lead_text] if open_ + lead_text else [])
    if both[: len(open_ids)] != open_ids:
        raise HarnessError(f"the simulator's tokenizer merges the prompt's text across the split before "
                           f"{lead_text!r} (prompt {template.version}); use another model or prompt version")
    return _Layout(
        head=_trusted_ids(tokenizer, head_items[: last + 1]),
        lead="".join(str(it) for it in head_items[last + 1:]),
        ctx_close=close, between=between, exp_open=open_, open_ids=open_ids,
        suffix_lead=lead_text, lead_ids=both[len(open_ids):],
        closing="".join(str(it) for it in tail_items[:first]),
        tail=_trusted_ids(tokenizer, tail_items[first:]),
        joined=joined,
    )


_PIECES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pieces_for(tokenizer, version: str) -> _Pieces | _Layout:
    template = get_template(version)
    make = _split_template if template.suffix_lead is None else _layout
    try:
        per_tok = _PIECES.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weak-referenced: no cache
        return make(tokenizer, template)
    if version not in per_tok:
        per_tok[version] = make(tokenizer, template)
    return per_tok[version]


# A prompt of plain words, for the one check per builder that the ids are the tokenizer's own.
_PROBE = ("The old bridge: 42 coins, said the farmer to", " me", "farm words, e.g. 'cat' or \"barn\" >>")


class PromptBuilder:
    """Cheap prompt construction: template pieces once, each context once, each explanation once."""

    def __init__(self, tokenizer, version: str, max_chars: int, cache_size: int = 1 << 16):
        self.tokenizer = tokenizer
        self.version = version
        self.template = get_template(version)
        self.max_chars = int(max_chars)
        self.pieces = _pieces_for(tokenizer, version)
        self._text = _rendered_parts(tokenizer, self.template)
        # unk is excluded: a SentencePiece model may legitimately map a rare character to it.
        self._special = special_token_ids(tokenizer) - {getattr(tokenizer, "unk_token_id", None)}
        self._prefix = functools.lru_cache(maxsize=cache_size)(self._build_prefix)
        self._suffix = functools.lru_cache(maxsize=cache_size)(self._build_suffix)
        if isinstance(self.pieces, _Layout):
            self._check_canonical()

    @property
    def canonical(self) -> bool:
        """Whether the ids are the tokenizer's own tokenisation of `text()` (v2/yn2/yn3; not v1/yn1)."""
        return isinstance(self.pieces, _Layout)

    @property
    def head_ids(self) -> list[int]:
        """The part of every prefix before the context (identical for all contexts)."""
        return list(self.pieces.head)

    def text(self, context_text: str, last_token_text: str, explanation: str) -> str:
        """The prompt as text (chat template applied): what `build` tokenises."""
        head, middle, tail = self._text
        return (head + mark_context(context_text, last_token_text, self.template) + middle
                + clean_explanation(explanation, self.max_chars, self.template) + tail)

    def _check_canonical(self) -> None:
        ids = self.build(*_PROBE).ids
        want = list(self.tokenizer(self.text(*_PROBE), add_special_tokens=False)["input_ids"])
        if ids != want:
            raise HarnessError(
                f"prompt {self.version}: the simulator's tokenizer does not cut the prompt at its added tokens "
                "the way Hugging Face tokenizers do (e.g. it strips spaces around them), so the harness cannot "
                "reproduce its tokenisation; use another model")

    def untrusted_ids(self, text: str) -> tuple[int, ...]:
        if not text:
            return ()
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if self._special.intersection(ids):
            # Non-special added tokens (e.g. "<think>") are still matched whole; break each up.
            ids = self._split_added(text)
        return tuple(ids)

    def _split_added(self, text: str) -> list[int]:
        pattern = _added_pattern(self.tokenizer)
        assert pattern is not None   # only called when an added token's id came out
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

    def _merged(self, where: str) -> HarnessError:
        return HarnessError(
            f"prompt {self.version}: the simulator's tokenizer merges {where} across the split before the "
            f"explanation, so prefix + suffix would not be its own tokenisation; use another model")

    def _build_prefix(self, context_text: str, last_token_text: str) -> tuple[int, ...]:
        marked = mark_context(context_text, last_token_text, self.template)
        lay = self.pieces
        if isinstance(lay, _Pieces):
            return lay.head + self.untrusted_ids(marked) + lay.middle
        run = lay.lead + marked + lay.ctx_close
        ids = self.untrusted_ids(run)
        if not lay.joined:   # the run ends at an added token: nothing can merge across
            return lay.head + ids + lay.between + lay.open_ids
        # A pre-tokeniser decides where the piece before the split ends from the characters right after it,
        # which are always `suffix_lead`: with them appended, the run must tokenise to these ids + theirs.
        if self.untrusted_ids(run + lay.suffix_lead) != ids + lay.lead_ids:
            raise self._merged(f"the context {context_text[-40:]!r}")
        return lay.head + ids

    def _build_suffix(self, explanation: str) -> tuple[int, ...]:
        text = clean_explanation(explanation, self.max_chars, self.template)
        lay = self.pieces
        if isinstance(lay, _Pieces):
            return self.untrusted_ids(text) + lay.tail
        # Tokenised from the start of its run (the trusted `exp_open`) and cut after its own ids, so
        # that what precedes the split shapes the explanation's tokens exactly as in the whole prompt.
        ids = self.untrusted_ids(lay.exp_open + lay.suffix_lead + text + lay.closing)
        n = len(lay.open_ids)
        if ids[:n] != lay.open_ids:
            raise self._merged(f"the explanation {text[:40]!r}")
        return ids[n:] + lay.tail

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
