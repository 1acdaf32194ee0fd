"""Stopping rules: EOS ids and stop sequences (token-id sequences, or strings matched on decoded text)."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from lightning_gpt.config import is_int

__all__ = ["StopCriteria", "NOT_STOPPED", "STOP_EOS", "STOP_SEQUENCE", "FINISH_REASONS"]

NOT_STOPPED, STOP_EOS, STOP_SEQUENCE = 0, 1, 2
FINISH_REASONS = {NOT_STOPPED: "length", STOP_EOS: "eos", STOP_SEQUENCE: "stop"}

StopSpec = Union[None, str, Sequence[int], Sequence[Union[str, Sequence[int]]]]


class StopCriteria:
    """Decides, after each new token, whether a row has finished and why.

    Only the generated tokens are searched (a stop sequence inside the prompt does not count), and a row stops as soon
    as the newest token completes an EOS id or a stop sequence.

    Args:
        eos_token_ids: ids that end a row (the EOS token stays in the output).
        stop: one stop sequence or a list of them; each is a string (needs ``tokenizer``; matched on the decoded
            text of the generated tokens) or a list of token ids (matched as a suffix of the generated ids).
        tokenizer: anything with ``decode(ids) -> str``; required for string stop sequences.
        vocab_size: for checking token-id stop sequences.
    """

    def __init__(
        self,
        eos_token_ids: Optional[list[int]] = None,
        stop: StopSpec = None,
        tokenizer: Optional[Any] = None,
        vocab_size: Optional[int] = None,
    ) -> None:
        self.eos_token_ids = list(eos_token_ids or [])
        self.stop_ids: list[list[int]] = []
        self.stop_strings: list[str] = []
        items: Sequence[Any] = stop if stop is not None else []
        if isinstance(stop, str) or (isinstance(stop, Sequence) and len(stop) and all(is_int(t) for t in stop)):
            items = [stop]  # a single string or a single id sequence
        elif isinstance(stop, Tensor):
            items = [stop.tolist()]
        for item in items:
            if isinstance(item, Tensor):
                item = item.tolist()
            if isinstance(item, str):
                if not item:
                    raise ValueError("stop contains an empty string; stop strings must be non-empty.")
                self.stop_strings.append(item)
            elif isinstance(item, Sequence) and len(item) and all(is_int(t) for t in item):
                if vocab_size is not None and any(not 0 <= t < vocab_size for t in item):
                    raise ValueError(f"stop sequence {list(item)} holds ids outside the vocabulary [0, {vocab_size}).")
                self.stop_ids.append(list(item))
            else:
                raise ValueError(
                    f"Each stop sequence must be a non-empty string or a non-empty list of token ids, got {item!r}."
                )
        if self.stop_strings and tokenizer is None:
            raise ValueError(
                f"String stop sequences {self.stop_strings} need a tokenizer to decode the generated ids: pass "
                "tokenizer=..., or give the stop sequences as token-id lists."
            )
        self.tokenizer: Any = tokenizer  # not None when there are stop strings (checked above)
        # Text the window must decode to: the longest stop string, plus up to 3 replacement characters for a UTF-8
        # sequence cut at the window's left edge. First guess in tokens: one per UTF-8 byte (byte-level tokenizers
        # never produce less than a byte per token); ``_window_text`` widens it when tokens decode to nothing.
        self._need = max((len(s) for s in self.stop_strings), default=0) + 3
        self._tail = max((len(s.encode("utf-8")) for s in self.stop_strings), default=0) + 3
        self._eos: Optional[Tensor] = None

    @property
    def active(self) -> bool:
        """Whether any rule besides the length limit is configured."""
        return bool(self.eos_token_ids or self.stop_ids or self.stop_strings)

    def __call__(self, new_tokens: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """Reason codes ``(N,)`` (``NOT_STOPPED``, ``STOP_EOS``, ``STOP_SEQUENCE``) for rows whose newest token is last.

        Args:
            new_tokens: ``(N, L)`` generated ids (prompt excluded), newest last.
            lengths: ``(N,)`` how many of the trailing ids are real for each row (default: all ``L``); ids before
                them (left fill) are ignored.
        """
        N, L = new_tokens.shape
        reason = torch.zeros(N, dtype=torch.long, device=new_tokens.device)
        if L == 0:
            return reason
        if self.eos_token_ids:
            if self._eos is None or self._eos.device != new_tokens.device:
                self._eos = torch.tensor(self.eos_token_ids, device=new_tokens.device)
            reason = torch.where(torch.isin(new_tokens[:, -1], self._eos), STOP_EOS, reason)
        if lengths is None:
            lengths = torch.full((N,), L, device=new_tokens.device)
        for seq in self.stop_ids:
            m = len(seq)
            if m > L:
                continue
            target = torch.tensor(seq, device=new_tokens.device)
            hit = (new_tokens[:, -m:] == target).all(dim=1) & (lengths >= m)
            reason = torch.where(hit & (reason == NOT_STOPPED), STOP_SEQUENCE, reason)
        if self.stop_strings:
            rows = new_tokens.tolist()
            n_real = lengths.tolist()
            for row in range(N):
                if reason[row] != NOT_STOPPED:
                    continue
                ids = rows[row][L - int(n_real[row]) :]
                if any(s in self._window_text(ids) for s in self.stop_strings):
                    reason[row] = STOP_SEQUENCE
        return reason

    def _window_text(self, ids: list[int]) -> str:
        """Decoded text of the last tokens of ``ids``, enough of them to hold the longest stop string.

        A window whose left edge cuts a multi-byte character decodes to replacement characters there, which never
        match a stop string; the window is wide enough that a stop string completed by the newest token lies wholly
        after that edge (checked every step, so a match is found at the step that completes it).
        """
        n = self._tail
        while True:
            text = self.tokenizer.decode(ids[-n:])
            if n >= len(ids) or len(text) >= self._need:
                return text
            n *= 2
