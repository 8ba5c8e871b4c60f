"""Tiny, self-built stand-ins for every artifact a task needs.

Tests and the `harness make-tiny-task` command build random GPT-NeoX or Llama models, a byte-level BPE
tokenizer with a chat template, a sparsify-format coder and a token corpus, all saved to disk in the
same formats as the real ones, so the real loading code is what runs. Nothing here is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_SUBJECTS = ["the cat", "a farmer", "my sister", "the robot", "our teacher", "the river", "a doctor",
             "the city", "his dog", "the program", "a student", "the market"]
_VERBS = ["sees", "builds", "likes", "finds", "moves", "writes", "opens", "follows", "counts", "paints"]
_OBJECTS = ["a red house", "the old bridge", "three apples", "the blue sky", "a long letter",
            "the small garden", "42 coins", "the last train", "a new song", "the quiet road"]
_CODE = ["def f(x):\n    return x + 1\n", "for i in range(10):\n    print(i)\n",
         "if a == b:\n    a = [1, 2, 3]\n", "import numpy as np\nx = np.zeros(5)\n"]


def synthetic_texts(n: int, seed: int) -> list[str]:
    """Seeded template text: varied enough that latents of a random coder fire on different tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.2:
            out.append(str(rng.choice(_CODE)))
            continue
        parts = []
        for _ in range(int(rng.integers(2, 5))):
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            if rng.random() < 0.3:
                s += f" on day {int(rng.integers(1, 31))}"
            parts.append(s.capitalize() + rng.choice([".", "!", "?", ","]))
        out.append(" ".join(parts) + "\n")
    return out


def build_tokenizer(texts: list[str], vocab_size: int = 384):
    """Byte-level BPE (every digit is its own token, like Llama-3's and SmolLM2's) with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_model(arch: str, vocab_size: int, seed: int, *, hidden: int = 64, layers: int = 2):
    """A random causal LM of the given family, small enough to run a test in milliseconds."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

    if arch == "gpt_neox":
        cfg = GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=4 * hidden, max_position_embeddings=512,
            rope_parameters={"partial_rotary_factor": 0.25},
            use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False,
        )
    elif arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=3 * hidden, max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}: use gpt_neox or llama")
    model = AutoModelForCausalLM.from_config(cfg)
    # The weights come from seeded_uniform, not from transformers' initialisers or torch's generator: those
    # change with package versions and CPU kernels, and the tiny task must be the same on every machine.
    # Matrices: uniform with the init's std (0.02); norm weights 1 and biases 0, as the initialisers set them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                values = seeded_uniform(seed, name, tuple(p.shape)) * (0.02 * 3 ** 0.5)
            else:
                values = np.full(tuple(p.shape), 1.0 if "norm" in name and name.endswith("weight") else 0.0)
            p.copy_(torch.from_numpy(values.astype(np.float32)))
        # Random init gives near-uniform logits; scaling the head makes CE differences between conditions visible.
        model.get_output_embeddings().weight.mul_(3.0)
    return model.eval()


def seeded_uniform(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """float64 values uniform on [-1, 1), the same on every machine and numpy version: PCG64's raw 64-bit
    stream (fixed by its definition, unlike Generator's distribution methods) cut to 24-bit integers, so
    every value and its float32 image are exact; one stream per (seed, tensor name)."""
    sub = int.from_bytes(hashlib.sha256(f"{seed}|{name}".encode()).digest()[:8], "little")
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.random.PCG64(sub).random_raw(n) >> np.uint64(40)
    return ((raw.astype(np.float64) - 2.0 ** 23) / 2.0 ** 23).reshape(shape)


def build_coder_tensors(d_in: int, num_latents: int, skip: bool, seed: int) -> dict:
    """Random sparsify-format tensors; encoder rows are unit vectors with biases tuned so ~k fire."""
    # float64 numpy from seeded_uniform, then float32: the same tensors on every machine (see build_model).
    w = seeded_uniform(seed, "encoder.weight", (num_latents, d_in))
    w = w / np.sqrt((w * w).sum(axis=1, keepdims=True))
    arrays = {
        "encoder.weight": w,
        "encoder.bias": -0.05 * (seeded_uniform(seed, "encoder.bias", (num_latents,)) + 1.0),
        "W_dec": 0.3 * 3 ** 0.5 * seeded_uniform(seed, "W_dec", (num_latents, d_in)),
        "b_dec": 0.01 * 3 ** 0.5 * seeded_uniform(seed, "b_dec", (d_in,)),
    }
    if skip:
        arrays["W_skip"] = 0.05 * 3 ** 0.5 * seeded_uniform(seed, "W_skip", (d_in, d_in))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    return tensors


def save_sparsify_coder(folder: Path, tensors: dict, *, d_in: int, num_latents: int, k: int,
                        transcode: bool | None, skip: bool) -> None:
    """Write `cfg.json` + `sae.safetensors` exactly as sparsify 1.3 does (transcode=None: legacy cfg)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "activation": "topk", "expansion_factor": max(1, num_latents // d_in), "normalize_decoder": True,
        "num_latents": num_latents, "k": k, "multi_topk": False, "skip_connection": skip, "d_in": d_in,
    }
    if transcode is not None:
        cfg["transcode"] = transcode
    save_file(tensors, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class TinyTaskOptions:
    task_id: str = "tiny-llama-transcoder"
    arch: str = "llama"              # subject family: llama | gpt_neox
    kind: str = "transcoder"         # transcoder | sae
    layer: int = 1
    num_latents: int = 64
    k: int = 4
    skip: bool = True
    T: int = 24
    corpus_texts: int = 1500
    calibration: int = 96
    test: int = 96
    detection_positive: int = 6
    detection_negative: int = 6
    activation_sample_tokens: int = 6000
    rewritten: int = 24              # number of latents to rewrite (seeded choice among alive ones: all if 0)
    seed: int = 0
    # float64: the tiny simulator's predictions sit within ~0.015 of each other on the 0-9 scale, so float32
    # kernels that sum in another order (AVX2 vs AVX-512) reorder near-tied predictions and move AUROCs and
    # calibrated values by whole steps; in float64, rounded to float32, they are the same on every CPU.
    simulator_dtype: str = "float64"


def make_tiny_task(out_dir: Path, opts: TinyTaskOptions | None = None) -> Path:
    """Build a complete task folder (model, simulator, coder, corpus, task.toml); returns the toml path."""
    if opts is None:
        opts = TinyTaskOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = synthetic_texts(opts.corpus_texts, opts.seed)
    tokenizer = build_tokenizer(texts)
    vocab = len(tokenizer)

    subject = build_model(opts.arch, vocab, opts.seed)
    subject.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")

    simulator = build_model("llama", vocab, opts.seed + 1)
    simulator.save_pretrained(out_dir / "simulator")
    tokenizer.save_pretrained(out_dir / "simulator")

    d = subject.config.hidden_size
    hookpoint = f"layers.{opts.layer}.mlp" if opts.kind == "transcoder" else f"layers.{opts.layer}"
    coder_dir = out_dir / "coder" / hookpoint
    tensors = build_coder_tensors(d, opts.num_latents, opts.skip and opts.kind == "transcoder",
                                  opts.seed + 2)
    save_sparsify_coder(coder_dir, tensors, d_in=d, num_latents=opts.num_latents, k=opts.k,
                        transcode=opts.kind == "transcoder", skip=opts.skip and opts.kind == "transcoder")

    ids = tokenizer("".join(texts))["input_ids"]
    np.savez_compressed(out_dir / "corpus.npz", tokens=np.asarray(ids, dtype=np.int32))

    artifacts = {
        rel: sha256_file(out_dir / rel)
        for rel in [f"coder/{hookpoint}/sae.safetensors", f"coder/{hookpoint}/cfg.json", "corpus.npz",
                    "model/model.safetensors", "simulator/model.safetensors"]
    }
    rewritten = f'{{ count = {opts.rewritten}, seed = {opts.seed} }}' if opts.rewritten else '"all"'
    art_lines = "\n".join(f'"{k}" = "{v}"' for k, v in artifacts.items())
    toml = f'''# Built by `harness make-tiny-task` ({opts.arch} subject, random weights): for tests and smoke runs only.
id = "{opts.task_id}"
description = "Tiny random {opts.arch} with a random {opts.kind} at {hookpoint}; exercises the whole pipeline in seconds."

[subject]
source = "local"
path = "model"

[coder]
source = "local"
path = "coder/{hookpoint}"
hookpoint = "{hookpoint}"
kind = "{opts.kind}"

[corpus]
source = "local-tokens"
path = "corpus.npz"

[contexts]
T = {opts.T}
seed = {opts.seed}
activation_sample_tokens = {opts.activation_sample_tokens}
calibration = {opts.calibration}
test = {opts.test}
detection_positive = {opts.detection_positive}
detection_negative = {opts.detection_negative}

[latents]
rewritten = {rewritten}

[simulator]
source = "local"
path = "simulator"
dtype = "{opts.simulator_dtype}"
prompt_version = "v2"
max_explanation_chars = 400

[scoring]
quantile_method = "inverted_cdf"
n_quantiles = 257
bootstrap = 10000
seed = {opts.seed}

[artifacts]
{art_lines}
'''
    path = out_dir / "task.toml"
    path.write_text(toml)
    return path
