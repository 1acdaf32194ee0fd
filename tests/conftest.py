"""Suite-wide test settings."""

import os

import torch

# The tests use tiny models: one thread is faster than several that wait on each other, and a CI machine has 2 cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Token and tokenizer caches of a test run never land in the user's home directory.
os.environ.setdefault("LIGHTNING_GPT_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "lightning_gpt_test_cache"))
