"""``JSONLPredictionWriter``: writes ``predict`` results (prompt, completion, tokens, finish_reason) as JSONL."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from lightning_gpt.errors import storage_error

__all__ = ["JSONLPredictionWriter"]


def _records(prediction: Any) -> list[dict[str, Any]]:
    if prediction is None:
        return []
    if isinstance(prediction, dict):
        return [prediction]
    if isinstance(prediction, (list, tuple)) and all(isinstance(r, dict) for r in prediction):
        return list(prediction)
    raise ValueError(
        "JSONLPredictionWriter expects predict_step to return a dict or a list of dicts (prompt, completion, tokens, "
        f"finish_reason), got {type(prediction).__name__}."
    )


class JSONLPredictionWriter(BasePredictionWriter):
    """Write one JSON object per completion to ``output_path``, atomically.

    Records are appended to ``<output_path>.tmp`` batch by batch (nothing is held in memory) and the file is moved into
    place with ``os.replace`` when prediction ends, so a crashed run never leaves a truncated result file. With several
    processes each rank writes ``<stem>.rank<r><suffix>``.

    The other fields of each input record (a JSONL prompts file's ``"id"``, ``"meta"``, ...) come first in its output
    record, so results join back to their inputs (with ``PromptDataModule``; the generated keys win a name clash).

    SIGTERM (received by Lightning's handler, ``trainer.received_sigterm``) stops prediction after the current batch:
    the temporary file is removed, the final file is not written (an earlier one stays as it was), a message says how
    many completions were discarded, and the run ends with ``SIGTERMException(143)``.

    Args:
        output_path: the ``.jsonl`` file to write; parent directories are created.
        fields: keys to keep from each generated record, in this order (others are dropped); ``None`` keeps every key.
        carry_input_fields: copy the input record's fields into each output record.
    """

    def __init__(
        self,
        output_path: str = "predictions.jsonl",
        fields: Optional[Sequence[str]] = ("prompt", "completion", "tokens", "finish_reason"),
        carry_input_fields: bool = True,
    ) -> None:
        super().__init__(write_interval="batch")
        if not output_path:
            raise ValueError("JSONLPredictionWriter.output_path must be a file path, e.g. predictions.jsonl.")
        if os.path.isdir(output_path):
            raise ValueError(
                f"--writer.output_path {output_path} is an existing directory; name a file, e.g. "
                f"{os.path.join(str(output_path), 'predictions.jsonl')}."
            )
        self.output_path = str(output_path)
        self.fields = list(fields) if fields is not None else None
        self.carry_input_fields = carry_input_fields
        self._file: Optional[Any] = None
        self._target: Optional[Path] = None
        self.num_written = 0

    def _path_for(self, trainer: Trainer) -> Path:
        path = Path(self.output_path)
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    @property
    def path(self) -> Optional[Path]:
        """Where the results of the current (or last) run go."""
        return self._target

    @override
    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._target = self._path_for(trainer)
        if self._target.is_dir():
            raise ValueError(
                f"--writer.output_path {self._target} is an existing directory; name a file, e.g. "
                f"{self._target / 'predictions.jsonl'}."
            )
        try:
            self._target.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._target.with_name(self._target.name + ".tmp"), "w", encoding="utf-8")
        except OSError as err:
            _raise_storage(err, self._target)
        self.num_written = 0

    @override
    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if self._file is None:
            raise RuntimeError("JSONLPredictionWriter: write_on_batch_end called before on_predict_start.")
        records = _records(prediction)
        inputs = self._inputs(trainer, batch_indices, len(records))
        try:
            for i, record in enumerate(records):
                if self.fields is not None:
                    record = {k: record[k] for k in self.fields if k in record}
                if inputs:
                    record = {**inputs[i], **record}
                self._file.write(json.dumps(record, ensure_ascii=False, default=_to_json) + "\n")
                self.num_written += 1
            self._file.flush()
        except OSError as err:
            _raise_storage(err, self._target)

    def _inputs(self, trainer: Trainer, batch_indices: Optional[Sequence[int]], n_records: int) -> list[dict[str, Any]]:
        """The input record of each output record (``num_return_sequences`` outputs share one input)."""
        input_record = getattr(getattr(trainer, "datamodule", None), "input_record", None)
        if not self.carry_input_fields or not batch_indices or not callable(input_record):
            return []
        per_input = max(1, n_records // len(batch_indices))
        return [input_record(int(batch_indices[i // per_input])) for i in range(n_records)]

    @override
    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if getattr(trainer, "received_sigterm", False):
            from lightning.pytorch.utilities.exceptions import SIGTERMException
            from lightning.pytorch.utilities.rank_zero import rank_zero_info

            target = self._target
            kept = f"{target} is unchanged" if target is not None and target.exists() else f"{target} was not written"
            rank_zero_info(
                f"SIGTERM: stopped after {batch_idx + 1} batch(es); the {self.num_written} completion(s) decoded so "
                f"far were discarded and {kept}. Run the same command again to decode every prompt."
            )
            raise SIGTERMException(143)

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._file is None or self._target is None:
            return
        tmp = Path(self._file.name)
        try:
            self._file.close()
            self._file = None
            os.replace(tmp, self._target)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            _raise_storage(err, self._target)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Leave no partial result behind; the previous results file (if any) is untouched.
        if self._file is not None:
            tmp = Path(self._file.name)
            with contextlib.suppress(OSError):  # on a full disk, close() fails flushing what is discarded anyway
                self._file.close()
            self._file = None
            tmp.unlink(missing_ok=True)


def _raise_storage(err: OSError, target: Any) -> None:
    wrapped = storage_error(err, target, "the predictions", "--writer.output_path")
    if wrapped is None:
        raise err
    raise wrapped from err


def _to_json(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
