"""``evaluate``: the Python entry point behind ``lightning-gpt evaluate`` (text mode and lm-eval tasks mode)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from lightning_gpt.evaluation.loading import load_model
from lightning_gpt.model import GPT

__all__ = ["evaluate", "format_table", "write_json"]


def evaluate(
    ckpt_path: Optional[str] = None,
    *,
    source: Optional[str] = None,
    tasks: Union[None, str, Sequence[str]] = None,
    include_path: Optional[str] = None,
    model: Optional[GPT] = None,
    tokenizer: Any = None,
    batch_size: int = 8,
    text_column: str = "text",
    split: str = "train",
    dataset_config: Optional[str] = None,
    max_chars: Optional[int] = None,
    num_fewshot: Optional[int] = None,
    limit: Optional[float] = None,
    seed: int = 1234,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    trust_checkpoint: bool = False,
    output_path: Optional[str] = None,
) -> dict[str, Any]:
    """Evaluate a model on a text source (loss, perplexity, bits per byte) or on lm-evaluation-harness tasks.

    Give exactly one of ``source`` and ``tasks``, and either ``ckpt_path`` or ``model`` + ``tokenizer``.

    Args:
        ckpt_path: see ``load_model``.
        source: text mode: any ``--data.source`` of ``fit`` (``python-stdlib``, a file, folder or glob of
            ``.txt``/``.jsonl``/``.parquet``, ``hf://<dataset>``); each document is scored on its own
            (``lightning_gpt.evaluation.text``).
        tasks: tasks mode: lm-eval task names (a list or ``"t1,t2"``), run through ``LightningGPTLM``.
        include_path: a folder of extra lm-eval task YAMLs (tasks mode).
        model: an already loaded ``GPT`` (with ``tokenizer``), instead of ``ckpt_path``.
        tokenizer: see ``load_model``.
        batch_size: rows per forward pass.
        text_column: the text field of ``.jsonl``/``.parquet``/Hugging Face sources.
        split: the Hugging Face split of an ``hf://`` source.
        dataset_config: the Hugging Face dataset configuration.
        max_chars: read at most this many characters of the source.
        num_fewshot: lm-eval few-shot examples (default: each task's own).
        limit: lm-eval: at most this many documents per task (or a fraction, if < 1).
        seed: lm-eval's random seeds (few-shot sampling, sampled generation).
        device: default ``cuda`` when available, else ``cpu``.
        dtype: ``float32``, ``bfloat16`` or ``float16``; default the saved dtype.
        trust_checkpoint: allow a full unpickle (code may run) of a trusted file.
        output_path: write the results there as JSON (atomically: a temporary file renamed into place).

    Returns:
        Text mode: ``{"source", "loss", "perplexity", "bits_per_byte", "tokens", "bytes", "documents"}``. Tasks mode:
        lm-eval's ``results`` mapping, ``{task: {"<metric>,<filter>": value, ...}}`` (e.g. ``"acc,none"``,
        ``"bits_per_byte,none"``).

    Raises:
        ValueError: neither or both of ``source`` and ``tasks``; an unknown task; a bad checkpoint or source.
        ImportError: tasks mode without ``lm_eval`` installed (``pip install 'lightning-gpt[eval]'``).
    """
    if (source is None) == (tasks is None or tasks == []):
        raise ValueError(
            "Give either a text source (--data.source FILE: loss, perplexity and bits per byte) or lm-eval tasks "
            "(--tasks T1,T2), not both and not neither."
        )
    if batch_size < 1:
        raise ValueError(f"--batch_size must be a positive integer, got {batch_size}.")
    if output_path is not None and os.path.isdir(output_path):
        raise ValueError(f"--output_path {output_path!r} is a directory; give a file name such as results.json.")
    task_list = _task_list(tasks) if tasks is not None else []
    harness = _import_harness() if task_list else None  # before the model is read: fail fast without lm_eval
    if model is None:
        if ckpt_path is None:
            raise ValueError("Give --ckpt_path (a checkpoint, run folder, export folder or nanoGPT ckpt.pt).")
        model, tokenizer = load_model(
            ckpt_path, tokenizer=tokenizer, device=device, dtype=dtype, trust_checkpoint=trust_checkpoint
        )
    elif tokenizer is None:
        raise ValueError("evaluate(model=...) needs the model's tokenizer too (tokenizer=...).")
    if source is not None:
        from lightning_gpt.data.sources import resolve_source
        from lightning_gpt.evaluation.text import score_documents

        text = resolve_source(
            source, text_column=text_column, max_chars=max_chars, dataset_config=dataset_config, split=split
        )
        results: dict[str, Any] = {
            "source": source,
            **score_documents(model, tokenizer, text.documents(), batch_size).as_dict(),
        }
    else:
        results = _run_tasks(harness, model, tokenizer, task_list, include_path, batch_size, num_fewshot, limit, seed)
    if output_path is not None:
        write_json(results, output_path)
    return results


def _task_list(tasks: Union[str, Sequence[str]]) -> list[str]:
    items = tasks.split(",") if isinstance(tasks, str) else [t for item in tasks for t in str(item).split(",")]
    names = [t.strip() for t in items if t.strip()]
    if not names:
        raise ValueError("--tasks is empty: name at least one lm-eval task, e.g. --tasks hellaswag.")
    return names


def _import_harness() -> Any:
    try:
        import lightning_gpt.evaluation.harness as harness
    except ImportError as err:
        raise ImportError(
            f"--tasks runs lm-evaluation-harness, which is not installed ({err}). Install it with: pip install "
            "'lightning-gpt[eval]'."
        ) from None
    return harness


def _run_tasks(
    harness: Any,
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    include_path: Optional[str],
    batch_size: int,
    num_fewshot: Optional[int],
    limit: Optional[float],
    seed: int,
) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    if include_path is not None and not os.path.isdir(include_path):
        raise FileNotFoundError(f"--include_path {include_path!r} is not a folder of lm-eval task YAML files.")
    # Indexing lm-eval's ~15,000 built-in task files takes ~20 s: look in --include_path alone first.
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"Unknown lm-eval task(s) {unknown}. List the known ones with `lm_eval ls tasks"
            + (f" --include_path {include_path}`" if include_path else "`")
            + "; for your own task YAMLs pass their folder with --include_path."
        )
    lm = harness.LightningGPTLM(model=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        log_samples=False,
    )
    return {task: _plain(values) for task, values in out["results"].items()}


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's per-task dict with JSON-safe values (``"N/A"`` stderr stays a string; NaN becomes ``None``)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def write_json(results: dict[str, Any], path: Union[str, Path]) -> Path:
    """Write ``results`` to ``path`` as JSON: to a temporary file beside it, renamed into place (never half-written).

    Raises:
        OSError: the folder cannot be written (full disk, no permission); nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def format_table(results: dict[str, Any]) -> str:
    """A markdown table of ``evaluate``'s results (text mode: one row per metric; tasks mode: one per task and
    metric)."""
    if "bits_per_byte" in results and "source" in results:
        rows = [(k, results[k]) for k in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes", "documents")]
        lines = [f"| metric | value ({results['source']}) |", "|---|---:|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
        return "\n".join(lines) + "\n"
    lines = ["| task | metric | value | stderr |", "|---|---|---:|---:|"]
    for task, values in results.items():
        for key, value in values.items():
            if "," not in key or "_stderr," in key:  # alias, name, sample_len; stderr goes in its own column
                continue
            metric, _, flt = key.partition(",")
            stderr = values.get(f"{metric}_stderr,{flt}")
            shown = metric if flt in ("", "none") else f"{metric} ({flt})"
            lines.append(f"| {task} | {shown} | {_fmt(value)} | {_fmt(stderr)} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"
    return str(value)
