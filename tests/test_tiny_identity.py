"""`harness make-tiny-task` builds the same models on every machine, and a local model's key names what
defines the model (config values, tensor values, tokenizer content), not how a package version wrote it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.model.load import ModelRef
from harness.testing.tiny import TinyTaskOptions, make_tiny_task, seeded_uniform

# Measured once (2026-12-05, transformers 5.25.0, tokenizers 0.23.3, torch 2.13.0+cpu); the weights come from
# PCG64's raw stream, so any machine and any package version that trains the same BPE gives these keys.
SIMULATOR_KEY = "local:simulator#1af840e6deb6"
SUBJECT_KEY = "local:model#2ef98ea7681d"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "task"
    make_tiny_task(root, TinyTaskOptions())
    return root


def _key(folder) -> str:
    return ModelRef(source="local", path=str(folder)).key()


def test_tiny_task_model_keys_are_pinned(task):
    assert _key(task / "simulator") == SIMULATOR_KEY
    assert _key(task / "model") == SUBJECT_KEY


def test_seeded_uniform_is_exact_24_bit_and_seeded():
    a = seeded_uniform(0, "w", (4, 5))
    assert a.shape == (4, 5) and a.min() >= -1 and a.max() < 1
    assert np.array_equal(a * 2**23, np.round(a * 2**23))          # every value k / 2^23, exact in float32
    # The first value by hand: PCG64's first raw output for the derived seed, top 24 bits, centred.
    import hashlib
    sub = int.from_bytes(hashlib.sha256(b"0|w").digest()[:8], "little")
    first = int(np.random.PCG64(sub).random_raw(1)[0]) >> 40
    assert a[0, 0] == (first - 2**23) / 2**23
    assert not np.array_equal(a, seeded_uniform(1, "w", (4, 5)))
    assert not np.array_equal(a, seeded_uniform(0, "v", (4, 5)))


def test_key_ignores_serialisation_but_not_values(task, tmp_path):
    import shutil

    folder = tmp_path / "simulator"
    shutil.copytree(task / "simulator", folder)
    # What another transformers/tokenizers version changes: the version stamp, torch_dtype vs dtype, null
    # fields, merges written as "a b" strings instead of pairs, the chat template's file, safetensors metadata.
    cfg = json.loads((folder / "config.json").read_text())
    cfg["transformers_version"] = "4.99.0"
    cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["some_new_field"] = None
    (folder / "config.json").write_text(json.dumps(cfg, indent=4))
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    tcfg = json.loads((folder / "tokenizer_config.json").read_text())
    tcfg["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    save_file(dict(reversed(list(tensors.items()))), str(folder / "model.safetensors"), metadata={"format": "pt", "by": "x"})
    assert _key(folder) == SIMULATOR_KEY

    # One weight's last bit is a different model.
    name = sorted(tensors)[0]
    t = tensors[name].clone()
    t.view(-1).view(dtype=__import__("torch").int32)[0] ^= 1
    tensors[name] = t
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert _key(folder) != SIMULATOR_KEY

    # So is another merge list.
    save_file(load_file(str(task / "simulator" / "model.safetensors")), str(folder / "model.safetensors"))
    assert _key(folder) == SIMULATOR_KEY
    tok["model"]["merges"] = tok["model"]["merges"][:-1]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    assert _key(folder) != SIMULATOR_KEY



def test_unreadable_folder_is_one_clear_error(task, tmp_path):
    import shutil

    from harness.errors import HarnessError

    folder = tmp_path / "simulator"
    shutil.copytree(task / "simulator", folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(HarnessError, match="save_pretrained folder"):
        _key(folder)
    shutil.copy(task / "simulator" / "config.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(b"\x01")
    with pytest.raises(HarnessError, match="cannot read its config, weights or tokenizer"):
        _key(folder)


def test_dtype_is_part_of_a_model_key(task):
    """A prediction made in one dtype must not be served from the store for another: the key names it (float32,
    the default, is left out so that older float32 keys stay valid)."""
    sim = task / "simulator"
    assert ModelRef(source="local", path=str(sim), dtype="float64").key() == SIMULATOR_KEY + ":float64"
    assert ModelRef(source="local", path=str(sim), dtype="float32").key() == SIMULATOR_KEY
    assert ModelRef(source="hub", id="o/m", revision="r", dtype="bfloat16").key() == "hub:o/m@r:bfloat16"
    assert ModelRef(source="hub", id="o/m", revision="r").key() == "hub:o/m@r"


def test_tiny_simulator_runs_in_float64(task):
    """The tiny task's simulator is float64 (TinyTaskOptions): its near-tied predictions keep their order on
    every CPU. Its answer read-out and attention scores stay float64 (readout_dtype), not float32."""
    import torch

    from harness.simulate.base import readout_dtype
    from harness.task.spec import load_task

    spec = load_task(str(task / "task.toml"))
    assert spec.simulator_ref().dtype == "float64"
    assert spec.simulator_ref().key().endswith(":float64")
    assert readout_dtype(torch.float64) == torch.float64
    assert readout_dtype(torch.bfloat16) == torch.float32 and readout_dtype(torch.float32) == torch.float32
