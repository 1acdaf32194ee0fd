"""``PromptDataModule``: batches of prompt strings for ``Trainer.predict`` / ``lightning-gpt predict``.

This is the one Lightning-dependent module of ``lightning_gpt.generation``; the package ``__init__`` does not import
it, so ``lightning_gpt.generation`` itself stays plain PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

__all__ = ["PromptDataModule", "prompts_in_batch", "read_numbered_prompts", "read_prompt_records", "read_prompts"]


def prompts_in_batch(batch: Any) -> list[str]:
    """The prompt strings of a ``predict`` batch: a list of strings, one string, or a dict with ``prompts``/``prompt``.

    Raises:
        ValueError: anything else.
    """
    if isinstance(batch, dict):
        batch = batch.get("prompts", batch.get("prompt"))
    if isinstance(batch, str):
        batch = [batch]
    if not isinstance(batch, (list, tuple)) or not all(isinstance(p, str) for p in batch):
        raise ValueError(
            f"predict expects batches of prompt strings (a list of str, or a dict with 'prompt'), got "
            f"{type(batch).__name__}."
        )
    return list(batch)


def read_prompts(path: str | Path, field: str = "prompt") -> list[str]:
    """Read prompts from a file: JSONL (one object per line with a ``field`` key) or plain text (one per line).

    See ``_read_prompts`` for the format; this returns only the prompt texts.

    Args:
        path: the prompts file.
        field: the key holding the prompt in JSONL records.
    """
    return [text for _, text, _ in _read_prompts(path, field)]


def read_prompt_records(path: str | Path, field: str = "prompt") -> list[tuple[str, dict[str, Any]]]:
    """``(prompt, record)`` per prompt: the whole input record (``{}`` for plain text), so that results can carry
    its other fields. See ``_read_prompts`` for the format."""
    return [(text, record) for _, text, record in _read_prompts(path, field)]


def read_numbered_prompts(path: str | Path, field: str = "prompt") -> list[tuple[int, str]]:
    """``(line number, prompt)`` pairs, so that an error can name ``file:line``. See ``_read_prompts``."""
    return [(number, text) for number, text, _ in _read_prompts(path, field)]


def check_prompts_file(path: str | Path) -> None:
    """Raises ``FileNotFoundError`` (one paragraph) when ``path`` is not a file: ``lightning-gpt predict`` calls it
    before building the model and the Trainer.

    Raises:
        FileNotFoundError: no such file.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"Prompts file {str(path)!r} does not exist (expected one prompt per line, or JSONL).")


def _read_prompts(path: str | Path, field: str = "prompt") -> list[tuple[int, str, dict[str, Any]]]:
    """Read ``(line number, prompt, record)`` per prompt from a file (``record`` is ``{}`` for plain text).

    The format is JSONL when the file name ends in ``.jsonl``/``.ndjson`` or its first non-blank line starts with
    ``{``. In plain text, blank lines are skipped and a literal ``\\n`` inside a line stands for a newline.

    Args:
        path: the prompts file.
        field: the key holding the prompt in JSONL records.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed JSONL line (named ``file:line``), or no prompts at all.
    """
    path = Path(path)
    check_prompts_file(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        data = path.read_bytes()
        line_no = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}:{line_no}: not valid UTF-8 (byte {data[err.start : err.start + 1]!r} at byte offset {err.start}). "
            f"Convert the prompts file to UTF-8, e.g. iconv -f latin1 -t utf-8 {str(path)!r} > prompts.txt."
        ) from None
    first = next((line for line in lines if line.strip()), "")
    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson") or first.lstrip().startswith("{")
    prompts: list[tuple[int, str, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not is_jsonl:
            prompts.append((number, line.replace("\\n", "\n"), {}))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number} is not valid JSON ({err.msg}): one object per line.") from err
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise ValueError(f'{path}:{number}: each JSONL record needs a string "{field}" field, got {line[:80]!r}.')
        prompts.append((number, record[field], record))
    if not prompts:
        raise ValueError(f"Prompts file {str(path)!r} holds no prompts.")
    return prompts


def _collate(batch: list[str]) -> list[str]:
    return list(batch)


class PromptDataModule(LightningDataModule):
    """Serves prompt strings to ``predict_step`` in batches (lists of ``str``).

    Args:
        path: prompts file: one prompt per line, or JSONL with a ``field`` key per record.
        prompts: prompts given directly instead of ``path``.
        batch_size: prompts per batch (decoded together, left-padded).
        field: the JSONL key holding the prompt.
    """

    def __init__(
        self,
        path: Optional[str] = None,
        prompts: Optional[list[str]] = None,
        batch_size: int = 8,
        field: str = "prompt",
    ) -> None:
        super().__init__()
        if (path is None) == (prompts is None):
            raise ValueError("PromptDataModule needs exactly one of path (a prompts file) or prompts (a list of str).")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"PromptDataModule.batch_size must be a positive integer, got {batch_size!r}.")
        if prompts is not None:
            if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts) or not prompts:
                raise ValueError("PromptDataModule.prompts must be a non-empty list of strings.")
        self.path = path
        self.batch_size = batch_size
        self.field = field
        self._prompts: Optional[list[str]] = list(prompts) if prompts is not None else None
        self._records: list[dict[str, Any]] = [{} for _ in self._prompts] if self._prompts is not None else []
        self._where: Optional[list[str]] = [f"prompt {i}" for i in range(1, len(prompts) + 1)] if prompts else None

    @property
    def prompts(self) -> list[str]:
        """The prompts, read from ``path`` on first use."""
        if self._prompts is None:
            if self.path is None:
                raise ValueError("PromptDataModule needs prompts: pass --data.path FILE (or prompts=[...] in Python).")
            rows = _read_prompts(self.path, self.field)
            self._prompts = [text for _, text, _ in rows]
            self._records = [record for _, _, record in rows]
            self._where = [f"{self.path}:{number}" for number, _, _ in rows]
        return self._prompts

    def input_record(self, index: int) -> dict[str, Any]:
        """The whole input record of prompt ``index`` (a JSONL line's object; ``{}`` for plain text), so that results
        can carry its other fields (an ``"id"``, ...) and be joined back to the inputs."""
        _ = self.prompts
        return self._records[index] if 0 <= index < len(self._records) else {}

    def check_prompt_lengths(self, tokenizer: Any, block_size: int, max_new_tokens: Optional[int]) -> None:
        """Check every prompt against the model's context before any is decoded.

        Args:
            tokenizer: the model's tokenizer (``encode(text) -> list[int]``).
            block_size: the model's context length.
            max_new_tokens: tokens generated per prompt; ``None`` fills the context (so at least 1 must fit).

        Raises:
            ValueError: the first prompt that does not fit, named by ``file:line`` (or ``prompt <n>``).
        """
        new = max_new_tokens or 1
        prompts = self.prompts  # reads the file (and the line numbers) on first use
        for where, prompt in zip(self._where or [], prompts):
            n = max(len(tokenizer.encode(prompt)), 1)  # an empty prompt starts from BOS
            if n + new > block_size:
                fixes = [f"shorten that prompt to at most {block_size - new} tokens"] if new < block_size else []
                if n < block_size:
                    fixes.append(f"lower max_new_tokens to at most {block_size - n}")
                fix = " or ".join(fixes) or "use a model with a longer context"
                raise ValueError(
                    f"{where}: The prompt ({n} tokens) plus max_new_tokens ({new}) is {n + new} tokens, more than the "
                    f"model's context (block_size={block_size}): {fix}. Nothing was decoded."
                )

    def setup(self, stage: Optional[str] = None) -> None:
        """Read the prompts file (fails early with a clear message when it is missing or malformed)."""
        _ = self.prompts

    def predict_dataloader(self) -> DataLoader[Any]:
        """Batches of prompt strings in file order."""
        prompts: Any = self.prompts  # a list is a map-style dataset (DataLoader's annotation asks for a Dataset)
        return DataLoader(prompts, batch_size=self.batch_size, shuffle=False, collate_fn=_collate)
