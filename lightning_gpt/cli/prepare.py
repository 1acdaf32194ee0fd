"""``lightning-gpt prepare``: tokenize a source once, in parallel, into a dataset folder that ``fit`` streams.

```bash
lightning-gpt prepare --config recipes/gpt2-124m.yaml --output_dir data/fineweb-10bt      # the recipe's data.* options
lightning-gpt prepare --data.source corpus.jsonl --data.tokenizer bpe --output_dir data/corpus --num_workers 8
lightning-gpt fit --config recipes/gpt2-124m.yaml --data.source data/fineweb-10bt          # streams it
```

The options are ``fit``'s ``--data.*`` (and ``--seed_everything``, from which the validation sample and the tokenizer
sample derive, as in ``fit``); ``--config`` reads a ``fit`` YAML and uses its ``data`` and ``seed_everything``
entries. It runs on one machine (all its cores), or on several at once into a folder they all see: the same command
on every machine with litdata's ``DATA_OPTIMIZER_NUM_NODES`` (the number of machines) and ``DATA_OPTIMIZER_NODE_RANK``
(``0 .. N-1``) set (``lightning_gpt.data.prepared_nodes``); node 0 writes the manifest once every node's part is there.
The folder is then read by any number of nodes. ``--output_dir s3://bucket/prefix`` (one machine) tokenizes into a
local staging folder and uploads it, the manifest last (``lightning_gpt.data.object_store``; the endpoint and the
credentials from the usual ``AWS_*`` variables).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["prepare_command"]

# Options that only shape fit's batches (a recipe's data section may hold them; prepare ignores them).
_FIT_ONLY = {"block_size", "batch_size", "num_workers", "pin_memory", "mode", "shift_windows", "max_unprepared_chars"}


def _parser() -> Any:
    from jsonargparse import ArgumentParser

    from lightning_gpt.training.datamodule import TextDataModule

    parser = ArgumentParser(
        prog="lightning-gpt prepare",
        description="Tokenize a text source into a dataset folder (litdata chunks + lightning_gpt_dataset.json) that "
        "`lightning-gpt fit --data.source <folder>` streams. Same --data.* options as fit.",
        exit_on_error=True,
        allow_abbrev=False,  # --output_di is an error, not --output_dir (lightning_gpt.cli.flags)
    )
    parser.add_argument("--config", type=str, default=None, help="a fit YAML: its data and seed_everything entries")
    parser.add_argument(
        "--output_dir",
        type=str,
        required=True,
        help="the dataset folder to write (new or empty), or s3://bucket/prefix",
    )
    parser.add_argument(
        "--staging_dir",
        type=str,
        default=None,
        help="with an s3:// --output_dir: the local folder it is tokenized into before the upload (room for the "
        "whole dataset; default: under $TMPDIR; removed after the upload)",
    )
    parser.add_argument("--num_workers", type=int, default=0, help="processes (0: every CPU of this machine)")
    parser.add_argument("--seed_everything", type=int, default=1337, help="the run seed fit will use (1337 in recipes)")
    parser.add_argument("--chunk_bytes", type=str, default="64MB", help="size of a dataset chunk (the streaming unit)")
    parser.add_argument(
        "--node_wait_minutes",
        type=float,
        default=24 * 60,
        help="across machines (DATA_OPTIMIZER_NUM_NODES): how long node 0 waits for the other nodes' parts",
    )
    parser.add_class_arguments(TextDataModule, "data", skip=_FIT_ONLY)
    return parser


def _config_defaults(path: str) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"--config {path!r} is not a YAML mapping of fit options.")
    out: dict[str, Any] = {}
    for key, value in (cfg.get("data") or {}).items():
        if key not in _FIT_ONLY:
            out[f"data.{key}"] = value
    if cfg.get("seed_everything") is not None:
        out["seed_everything"] = int(cfg["seed_everything"])
    return out


def prepare_command(argv: list[str]) -> None:
    """``lightning-gpt prepare``: build the tokenizer and write the prepared dataset.

    Args:
        argv: the arguments after ``prepare`` (see ``lightning-gpt prepare --help``).

    Raises:
        ValueError: settings a prepared dataset cannot hold (a tail split, an explicit validation source), a bad
            source or an ``--output_dir`` holding other files.
    """
    parser = _parser()
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a path to a fit YAML.")
        parser.set_defaults(_config_defaults(argv[i + 1]))
        argv = argv[:i] + argv[i + 2 :]
    cfg = parser.parse_args(argv)
    if not cfg.node_wait_minutes > 0:
        raise ValueError(f"--node_wait_minutes must be a positive number of minutes, got {cfg.node_wait_minutes}.")
    os.environ["PL_GLOBAL_SEED"] = str(cfg.seed_everything)  # the run seed fit derives the data seeds from
    from lightning_gpt.data.prepared import prepare_dataset
    from lightning_gpt.training.datamodule import TextDataModule

    data = {k: v for k, v in cfg.data.items()} if hasattr(cfg.data, "items") else vars(cfg.data)
    dm = TextDataModule(**data)
    v = dm.settings.validation
    if v.source is not None or v.split is not None or (v.holdout == "tail" and v.fraction > 0):
        raise ValueError(
            "a prepared dataset holds out a seeded random sample of documents for validation (--data.val_fraction); "
            "--data.val_source, --data.val_split and --data.val_holdout tail are not used by prepare. Prepare the "
            "validation text into its own folder if you need a separate one, or drop those options."
        )
    if dm.streaming:
        raise ValueError(f"--data.source {dm.source!r} is already a prepared dataset; give the text source instead.")
    s = dm.settings.source
    spec = {
        "source": dm.source,
        "text_column": s.text_column,
        "max_chars": s.max_chars,
        "dataset_config": s.dataset_config,
        "split": s.split,
        "streaming": s.streaming,
    }
    manifest = prepare_dataset(
        dm.train_source(),
        spec,
        dm.tokenizer,
        cfg.output_dir,
        add_bos=dm.settings.tokenizer.add_bos,
        val_fraction=v.fraction,
        split_seed=dm.split_seed,
        num_workers=cfg.num_workers or None,
        chunk_bytes=cfg.chunk_bytes,
        node_wait_minutes=cfg.node_wait_minutes,
        staging_dir=cfg.staging_dir,
    )
    if "splits" not in manifest:  # a node other than 0 of a multi-machine prepare: its part is done
        first, end = manifest["shards"]
        done = (
            f"shards {first} to {end - 1} tokenized" if end > first else "no shard to tokenize (more nodes than shards)"
        )
        print(
            f"Node {manifest['node_rank']} of {manifest['num_nodes']}: {done} into {cfg.output_dir}. Node 0 merges "
            "the parts and writes the manifest once every node's part is there."
        )
        return
    splits = manifest["splits"]
    val = splits.get("val") or {"n_tokens": 0}
    print(
        f"Prepared {cfg.output_dir}: {splits['train']['n_tokens']:,} training and {val['n_tokens']:,} validation "
        f"tokens ({dm.tokenizer.describe()}). Train on it: lightning-gpt fit ... --data.source {cfg.output_dir}"
    )
