"""The eager decode step stays lean: calls into the package's own functions per generated token (``sys.setprofile``
on a 2-layer ``standard`` model, batch 1, greedy), counted as the difference between two generation lengths."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import lightning_gpt
from lightning_gpt import GPT, GPTConfig
from lightning_gpt.generation import generate

PACKAGE = str(Path(lightning_gpt.__file__).resolve().parent)


def package_calls(model: GPT, ids: torch.Tensor, n: int) -> int:
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        if event == "call" and str(Path(frame.f_code.co_filename).resolve()).startswith(PACKAGE):
            count += 1

    sys.setprofile(profile)
    try:
        generate(model, ids, max_new_tokens=n)
    finally:
        sys.setprofile(None)
    return count


def test_at_most_20_package_calls_per_decoded_token():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=128, n_layer=2, n_head=4, n_embd=128)).eval()
    ids = torch.randint(0, 512, (1, 8))
    per_token = (package_calls(model, ids, 42) - package_calls(model, ids, 10)) / 32
    assert per_token <= 20, per_token
