"""Shared test settings.

Tiny models run fastest on one thread: with two OpenMP threads and any other process on the second core,
every op waits on a descheduled thread (measured here: 6.6 ms vs 635 ms per tiny forward).
"""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
