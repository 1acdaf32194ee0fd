"""``lightning-gpt evaluate``: loss, perplexity and bits per byte on a text source, or lm-eval task scores.

```bash
lightning-gpt evaluate --ckpt_path runs/quickstart --data.source val.txt --output_path results.json
lightning-gpt evaluate --ckpt_path runs/quickstart --tasks my_mc,my_ppl --include_path my_tasks/   # lm-eval tasks
lightning-gpt evaluate --ckpt_path out-shakespeare-char/ckpt.pt --data.source input.txt            # a nanoGPT run
```

Plain ``argparse``, no Trainer (as ``generate``): the work is ``lightning_gpt.evaluation.evaluate``. The flags of the
text source keep ``fit``'s names (``--data.source``, ``--data.text_column``, ``--data.split``...), so a source that
trains also evaluates.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning_gpt.cli.options import checkpoint_parser

__all__ = ["evaluate_command"]


def _evaluate_parser() -> Any:
    parser = checkpoint_parser(
        "evaluate",
        "Evaluate a model. Text mode (--data.source): loss, perplexity and bits per byte of every "
        "document, scored in lm-eval's rolling windows. Tasks mode (--tasks): lm-evaluation-harness tasks through "
        "lightning-gpt's own lm-eval model (every attention kind; needs pip install 'lightning-gpt[eval]'). Prints "
        "a table; --output_path writes the results as JSON.",
    )
    add = parser.add_argument
    add("--data.source", dest="source", help="text mode: any source fit accepts (file, folder, glob, hf://...)")
    add("--data.text_column", dest="text_column", default="text", help="text field of .jsonl/.parquet/HF data")
    add("--data.split", dest="split", default="train", help="split of an hf:// source (default train)")
    add("--data.dataset_config", dest="dataset_config", default=None, help="configuration of an hf:// dataset")
    add("--data.max_chars", dest="max_chars", type=int, default=None, help="read at most this many characters")
    add("--tasks", default=None, help="tasks mode: comma-separated lm-eval task names")
    add("--include_path", default=None, help="a folder of your own lm-eval task YAMLs")
    add("--num_fewshot", type=int, default=None, help="few-shot examples per task (default: each task's)")
    add("--limit", type=float, default=None, help="at most this many documents per task (a fraction if < 1)")
    add("--seed", type=int, default=1234, help="lm-eval's random seeds (default 1234, as lm_eval's)")
    add("--batch_size", type=int, default=8, help="rows per forward pass (default 8)")
    add("--tokenizer", default=None, help="use this tokenizer (e.g. tiktoken:gpt2); default the checkpoint's")
    add("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's)")
    add("--output_path", default=None, help="write the results to this JSON file")
    return parser


def evaluate_command(argv: list[str]) -> None:
    """``lightning-gpt evaluate``: evaluate a checkpoint, print a table, optionally write JSON.

    Args:
        argv: the arguments after ``evaluate`` (see ``lightning-gpt evaluate --help``).

    Raises:
        ValueError: neither or both of --data.source and --tasks, an unknown task, a bad checkpoint or source.
        ImportError: --tasks without lm_eval installed.
    """
    opts = _evaluate_parser().parse_args(argv)
    from lightning_gpt.evaluation import evaluate, format_table

    try:
        results = evaluate(
            opts.ckpt_path,
            source=opts.source,
            tasks=opts.tasks,
            include_path=opts.include_path,
            tokenizer=opts.tokenizer,
            batch_size=opts.batch_size,
            text_column=opts.text_column,
            split=opts.split,
            dataset_config=opts.dataset_config,
            max_chars=opts.max_chars,
            num_fewshot=opts.num_fewshot,
            limit=opts.limit,
            seed=opts.seed,
            device=opts.device,
            dtype=opts.dtype,
            trust_checkpoint=opts.trust_checkpoint,
            output_path=opts.output_path,
        )
    except ImportError as err:  # the optional lm_eval: one paragraph with the install line, not a traceback
        raise ValueError(str(err)) from None
    sys.stdout.write(format_table(results))
    if opts.output_path:
        sys.stdout.write(f"Wrote {opts.output_path}\n")
