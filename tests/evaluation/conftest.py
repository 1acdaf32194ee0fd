"""Fixtures of the evaluation tests: a tiny GPT-2-shaped checkpoint, its Hugging Face export, and local lm-eval tasks
(a multiple-choice task, a rolling-perplexity task and a generative task) with JSON data files; all offline."""

from __future__ import annotations

import glob
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.data import CharTokenizer
from tests.helpers import build_once, python_env

TASKS = "lgpt_mc,lgpt_roll,lgpt_gen"
WORDS = "the quick brown fox jumps over a lazy dog and cat runs to its house while birds sing".split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_tasks(folder: Path, cache: Path) -> Path:
    """Three lm-eval task YAMLs over local JSON files in ``folder``; returns the folder (for --include_path)."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    mc = [
        {"question": sentence(rng, 4), "choices": [sentence(rng, rng.randint(1, 3)) for _ in range(3)], "label": i % 3}
        for i in range(12)
    ]
    roll = [{"text": sentence(rng, rng.randint(3, 30)) + "."} for _ in range(8)]  # up to ~200 chars: several windows
    gen = [{"prompt": sentence(rng, 3) + " =", "answer": " " + sentence(rng, 1)} for _ in range(6)]
    common = {"output_type": None, "test_split": "test", "dataset_path": "json", "metadata": {"version": 1.0}}
    specs: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
        "lgpt_mc": (
            mc,
            {
                "output_type": "multiple_choice",
                "doc_to_text": "Q: {{question}}\nA:",
                "doc_to_choice": "{{choices}}",
                "doc_to_target": "label",
                "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
            },
        ),
        "lgpt_roll": (
            roll,
            {
                "output_type": "loglikelihood_rolling",
                "doc_to_text": "",
                "doc_to_target": "{{text}}",
                "metric_list": [
                    {"metric": "word_perplexity"},
                    {"metric": "byte_perplexity"},
                    {"metric": "bits_per_byte"},
                ],
            },
        ),
        "lgpt_gen": (
            gen,
            {
                "output_type": "generate_until",
                "doc_to_text": "{{prompt}}",
                "doc_to_target": "{{answer}}",
                "generation_kwargs": {"until": ["\n", "."], "max_gen_toks": 8, "do_sample": False, "temperature": 0.0},
                "metric_list": [{"metric": "exact_match"}],
            },
        ),
    }
    for name, (docs, spec) in specs.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        config = {
            **common,
            **spec,
            "task": name,
            "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(cache)},
        }
        (folder / f"{name}.yaml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    return folder


def task_text(folder: Path) -> str:
    return "".join(p.read_text() for p in sorted(folder.glob("*.jsonl")))


def tiny_checkpoint(path: Path, text: str, seed: int = 0, **config: Any) -> Path:
    """A random GPT (weights scaled up so its predictions are far from uniform) saved as GPTModule saves one."""
    tokenizer = CharTokenizer.train([text + "Q:A=.\n"])
    fields = dict(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    fields.update(config)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.mul_(6.0)
            elif "ln" not in name:
                p.normal_(0, 0.1)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"gpt_config": model.config.to_dict(), "state_dict": state, "tokenizer": tokenizer.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def eval_setup(tmp_path_factory) -> dict[str, Path]:
    """The GPT-2-shaped checkpoint, its export folder, the task folder and a datasets cache."""
    from lightning_gpt.io import load_checkpoint
    from lightning_gpt.io.hf import write_pretrained

    def build(base: Path) -> None:
        write_tasks(base / "tasks", base / "hf_datasets")
        model, tokenizer = load_checkpoint(tiny_checkpoint(base / "gpt2ish.ckpt", task_text(base / "tasks")))
        write_pretrained(model, tokenizer, base / "export")

    base = build_once(tmp_path_factory, "eval", build)  # once per run, shared by the xdist workers
    return {
        "base": base,
        "tasks": base / "tasks",
        "ckpt": base / "gpt2ish.ckpt",
        "export": base / "export",
        "text": base / "tasks" / "lgpt_roll.jsonl",
    }


def _env(cache: Path) -> dict[str, str]:
    env = python_env()
    env.update(HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(cache), TOKENIZERS_PARALLELISM="false")
    return env


def run_lm_eval(cmd: list[str], out: Path, cache: Path) -> dict:
    """Run an ``lm_eval`` command line in a subprocess; the ``results`` of the JSON it wrote under ``out``."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(cache), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    return json.loads(Path(path).read_text())["results"]


@pytest.fixture(scope="session")
def hf_results(tmp_path_factory, eval_setup) -> dict:
    """A real ``lm_eval --model hf`` run (the command, in a subprocess) on the export folder, once per test run."""
    results = build_once(tmp_path_factory, "eval_hf", lambda folder: _run_hf(eval_setup, folder)) / "results.json"
    return json.loads(results.read_text())


def _run_hf(eval_setup: dict[str, Path], folder: Path) -> None:
    out = folder / "out"
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "lm_eval"),
        "--model", "hf",
        "--model_args", f"pretrained={eval_setup['export']},dtype=float32",
        "--tasks", TASKS,
        "--include_path", str(eval_setup["tasks"]),
        "--device", "cpu",
        "--batch_size", "4",
        "--output_path", str(out),
    ]  # fmt: skip
    results = run_lm_eval(cmd, out, folder / "hf_cache")
    (folder / "results.json").write_text(json.dumps(results))
