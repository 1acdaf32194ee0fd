"""Decode the jobs of one LitServe batch together: rows grouped by settings, left-padded, stepped in lockstep.

LitServe hands the worker a list of requests (its dynamic batching); this module decides how they share forward
passes. A job's rows (prompts x ``n``) join a *group* of rows with the same decoding settings (greedy rows always
share; sampling rows share when their settings match; a seeded sampling job gets its own group, so its draws are
the same as when it runs alone; beam search jobs each get one ``generate_text`` call). A group is one left-padded
``stream_generate`` call, so rows of different requests go through the model in one batch. Its prompts plus new
tokens must fit the context together (left padding makes every row as long as the longest), so a row that would not
fit starts another group. Groups advance one token per step in turn, at most ``max_batch_rows`` rows at a time.

Per row, this module (not the engine) applies the stopping rules that differ between requests: EOS, the request's
``max_new_tokens``, its stop strings (matched on the decoded text, cut from it) and stop id sequences. That is why
rows with different lengths and stop strings can share one group, and the text is what ``generate_text`` returns for
the same settings. The incremental text (``_Row.push``) is our own because ``generate_text``'s streaming helper
serves one prompt and is private to the generation package: it holds back an incomplete UTF-8 character and any
text that could still become a stop string.

Why not continuous batching (rows joining a running batch)? The public decoding API runs a fixed batch from prefill
to the end; LitServe's continuous loop would need rows added to a running decoding state. Requests that arrive
during a batch wait for the next one (``--batch_timeout`` gathers them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, cast

import torch
from torch import Tensor, nn

from lightning_gpt.generation import GenerationConfig, generate_text, stream_generate
from lightning_gpt.generation.text import _held_back  # the stream's own rule: what may still become a stop string
from lightning_gpt.serve.shared import SharedState

__all__ = ["decode_jobs"]

log = logging.getLogger(__name__)


@dataclass
class _Row:
    """One returned sequence: its prompt, limits, and what was generated and sent so far."""

    job: int
    choice: int
    ids: list[int]
    max_new: int
    stops: list[str]
    stop_ids: list[list[int]]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    reason: Optional[str] = None  # None while decoding; then "length", "eos", "stop" or "cancelled"

    def push(self, token: int, tokenizer: Any, eos_id: Optional[int]) -> str:
        """Take the next token; return the text that became certain (everything, once the row finishes)."""
        self.tokens.append(token)
        text = tokenizer.decode(self.tokens)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            text, self.reason = text[:cut], "stop"
        elif eos_id is not None and token == eos_id:
            self.reason = "eos"
        elif any(self.tokens[-len(s) :] == s for s in self.stop_ids):
            self.reason = "stop"
        elif len(self.tokens) >= self.max_new:
            self.reason = "length"
        self.text = text
        if self.reason is not None:
            return self.flush()
        stable = len(text)
        while stable > self.emitted and text[stable - 1] == "\ufffd":
            stable -= 1  # an incomplete UTF-8 character decodes to U+FFFD until its last byte arrives
        safe = stable - _held_back(text[:stable], self.stops)
        if safe <= self.emitted:
            return ""
        piece, self.emitted = text[self.emitted : safe], safe
        return piece

    def flush(self) -> str:
        piece, self.emitted = self.text[self.emitted :], len(self.text)
        return piece


@dataclass
class _Group:
    """Rows decoded by one ``stream_generate`` call (or, ``beam``, one ``generate_text`` call)."""

    settings: dict[str, Any]
    rows: list[_Row] = field(default_factory=list)
    beam: bool = False
    stream: Optional[Iterator[Tensor]] = None

    def width(self) -> int:
        """Padded prompt length plus the most new tokens: the context the group needs."""
        return max(len(r.ids) for r in self.rows) + max(r.max_new for r in self.rows)


def _key(job: dict[str, Any]) -> tuple[Any, ...]:
    """Jobs with equal keys may share a group: everything that changes how a row's next token is chosen."""
    s = job["settings"]
    if s["num_beams"] > 1:
        return ("beam", job["seq"])
    if s["do_sample"] and s["temperature"] > 0:
        key = ("sample",) + tuple(sorted(s.items()))
        return key + (job["seq"],) if s["seed"] is not None else key
    return ("greedy", s["repetition_penalty"], s["use_cache"])


def _split_stops(stop: Optional[list[Any]]) -> tuple[list[str], list[list[int]]]:
    stop = stop or []
    return [s for s in stop if isinstance(s, str)], [list(s) for s in stop if not isinstance(s, str)]


def _groups(jobs: list[dict[str, Any]], block_size: int, max_rows: int) -> list[_Group]:
    """Every row of every job in a group (first fit, in arrival order)."""
    groups: dict[tuple[Any, ...], list[_Group]] = {}
    for j, job in enumerate(jobs):
        key = _key(job)
        stops, stop_ids = _split_stops(job["stop"])
        settings = dict(job["settings"])
        rows = [
            _Row(j, p * job["n"] + c, ids, job["max_new_tokens"], stops, stop_ids)
            for p, ids in enumerate(job["prompts"])
            for c in range(job["n"])
        ]
        if settings["num_beams"] > 1:
            groups[key] = [_Group(settings, rows, beam=True)]
            continue
        bins = groups.setdefault(key, [])
        for row in rows:
            for group in bins:
                fits = max(max(len(r.ids) for r in group.rows), len(row.ids)) + max(
                    max(r.max_new for r in group.rows), row.max_new
                )
                if fits <= block_size and len(group.rows) < max_rows:
                    group.rows.append(row)
                    break
            else:
                bins.append(_Group(settings, [row]))
    return [g for bins in groups.values() for g in bins]


def _left_pad(rows: list[_Row]) -> tuple[Tensor, Tensor]:
    T = max(len(r.ids) for r in rows)
    input_ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, T - len(r.ids) :] = torch.tensor(r.ids, dtype=torch.long)
        mask[i, T - len(r.ids) :] = 1
    return input_ids, mask


def _start(group: _Group, model: nn.Module, tokenizer: Any, device: torch.device) -> None:
    """Open the group's ``stream_generate``: its rows left-padded, as many steps as its longest request asks for."""
    input_ids, mask = _left_pad(group.rows)
    # EOS and stop rules are applied per row by ``_Row.push`` (a finished row's slot runs on, unread, until the group
    # ends or every row is done and the stream is closed); the engine itself stops no row.
    config = GenerationConfig(**dict(group.settings, max_new_tokens=max(r.max_new for r in group.rows)))
    pad = getattr(tokenizer, "pad_id", None)
    group.stream = stream_generate(
        model, input_ids.to(device), config, attention_mask=mask.to(device), eos_token_id=None, pad_token_id=pad
    )


def _run_beams(group: _Group, job: dict[str, Any], model: nn.Module, tokenizer: Any) -> None:
    """Beam search for one job: ``generate_text`` on its prompts (every row finishes here)."""
    config = GenerationConfig(
        **group.settings,
        max_new_tokens=job["max_new_tokens"],
        stop=job["stop"],
        num_return_sequences=job["n"],
    )
    texts = [tokenizer.decode(ids) if t is None else t for ids, t in zip(job["prompts"], job["prompt_texts"])]
    results = generate_text(model, tokenizer, texts, config)
    for row, result in zip(group.rows, results):
        row.tokens, row.text, row.reason = list(result["tokens"]), result["completion"], result["finish_reason"]


def decode_jobs(
    model: nn.Module,
    tokenizer: Any,
    jobs: list[dict[str, Any]],
    *,
    state: Optional[SharedState] = None,
    max_batch_rows: int = 64,
    is_cancelled: Optional[Callable[[int], bool]] = None,
) -> Iterator[list[Optional[dict[str, Any]]]]:
    """Decode ``jobs`` together; after each step yield one update (or ``None``) per job, in order.

    An update is ``{"choices": [...], "done": bool}``. For a streaming job, ``choices`` holds the choices that got new
    text this step (``{"index", "text", "finish_reason"}``, the reason ``None`` until that row ends), and its last
    update adds ``"final"``: every choice's ``{"index", "tokens", "finish_reason"}``. A job that does not stream gets
    one update, at its end, whose ``choices`` hold every choice's whole ``"text"``, ``"tokens"`` and
    ``"finish_reason"``. Every last update (``"done": True``) has ``"usage"`` (prompt, completion and total tokens)
    and ``"batch_requests"`` (jobs decoded in this batch). A job that failed gets ``{"error": message, "status": 400
    or 500, "done": True}``; a cancelled job gets nothing more.

    Args:
        model: the ``GPT``, in eval mode, on its device.
        tokenizer: the checkpoint's tokenizer (``decode``, ``eos_id``, ``pad_id``).
        jobs: ``Job`` dicts from ``lightning_gpt.serve.requests`` (already checked).
        state: shared counters (tokens generated, batches...), or ``None``.
        max_batch_rows: the most rows in one forward pass; further groups start as earlier ones finish.
        is_cancelled: ``seq -> bool``; a cancelled job's rows are dropped before the next step (default: ask
            ``state``).

    Yields:
        A list with one update or ``None`` per job; steps where no job has anything to send are not yielded.
    """
    if is_cancelled is None:
        is_cancelled = state.is_cancelled if state is not None else (lambda seq: False)
    device = next(model.parameters()).device
    block_size = int(cast(Any, model).config.block_size)
    eos_id = getattr(tokenizer, "eos_id", None)
    pending = _groups(jobs, block_size, max_batch_rows)
    rows_of = {j: [r for g in pending for r in g.rows if r.job == j] for j in range(len(jobs))}
    live = set(range(len(jobs)))  # jobs still owed an update
    active: list[_Group] = []
    if state is not None:
        state.add("batches")
        state.add("requests", len(jobs))
        state.raise_to("max_batch_requests", len(jobs))
        state.set("last_batch_requests", len(jobs))

    def finish(j: int, updates: list[Optional[dict[str, Any]]], error: Optional[BaseException] = None) -> None:
        live.discard(j)
        if error is not None:
            status = 400 if isinstance(error, ValueError) else 500
            updates[j] = {"error": str(error) if status == 400 else "internal error", "status": status, "done": True}
            for r in rows_of[j]:
                r.reason = r.reason or "error"
            return
        job, rows = jobs[j], rows_of[j]
        final = [
            {"index": r.choice, "text": r.text, "tokens": r.tokens, "finish_reason": r.reason}
            for r in sorted(rows, key=lambda r: r.choice)
        ]
        prompt_tokens = sum(len(p) for p in job["prompts"]) * job["n"]
        completion_tokens = sum(len(r.tokens) for r in rows)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        usage["total_tokens"] = prompt_tokens + completion_tokens
        if job["stream"]:  # the text went out piece by piece; the end says how each choice ended
            update = updates[j] or {"choices": []}
            final = [{k: v for k, v in c.items() if k != "text"} for c in final]
            updates[j] = dict(update, done=True, final=final, usage=usage, batch_requests=len(jobs))
        else:
            updates[j] = {"choices": final, "done": True, "usage": usage, "batch_requests": len(jobs)}

    try:
        while pending or active:
            updates: list[Optional[dict[str, Any]]] = [None] * len(jobs)
            for j in [j for j in live if is_cancelled(jobs[j]["seq"])]:
                live.discard(j)
                for r in rows_of[j]:
                    r.reason = r.reason or "cancelled"
                if state is not None:
                    state.add("cancelled")
            busy = sum(len(g.rows) for g in active)
            while pending and (not active or busy + len(pending[0].rows) <= max_batch_rows):
                group = pending.pop(0)
                if all(r.reason is not None for r in group.rows):
                    continue
                job_ids = sorted({r.job for r in group.rows})
                try:
                    if group.beam:
                        _run_beams(group, jobs[job_ids[0]], model, tokenizer)
                        if state is not None:
                            state.add("generated_tokens", sum(len(r.tokens) for r in group.rows))
                    else:
                        _start(group, model, tokenizer, device)
                        active.append(group)
                        busy += len(group.rows)
                except Exception as err:  # one group's failure ends its jobs, not the batch
                    log.exception("Decoding failed for requests %s", [jobs[j]["seq"] for j in job_ids])
                    for j in job_ids:
                        if j in live:
                            finish(j, updates, err)
            if state is not None:
                state.set("active_rows", busy)
                state.raise_to("max_batch_rows", busy)
            for group in list(active):
                try:
                    _step(group, tokenizer, eos_id, jobs, updates, state)
                except Exception as err:
                    log.exception("Decoding failed for requests %s", sorted({jobs[r.job]["seq"] for r in group.rows}))
                    for j in sorted({r.job for r in group.rows}):
                        if j in live:
                            finish(j, updates, err)
                    group.rows = []
                if all(r.reason is not None for r in group.rows):
                    _close(group)  # frees the group's cache now
                    active.remove(group)
            for j in [j for j in live if all(r.reason is not None for r in rows_of[j])]:
                finish(j, updates)
            if any(u is not None for u in updates):
                yield updates
    finally:
        for group in active:
            _close(group)
        if state is not None:
            state.set("active_rows", 0)


def _close(group: _Group) -> None:
    close = getattr(group.stream, "close", None)  # stream_generate returns a generator; any iterator would do
    if close is not None:
        close()


def _step(
    group: _Group,
    tokenizer: Any,
    eos_id: Optional[int],
    jobs: list[dict[str, Any]],
    updates: list[Optional[dict[str, Any]]],
    state: Optional[SharedState],
) -> None:
    """Advance ``group`` by one token; add each streaming job's new text to ``updates``."""
    assert group.stream is not None
    try:
        next_ids = next(group.stream).tolist()
    except StopIteration:  # the engine's max_new_tokens: every row has reached its own limit by now
        for r in group.rows:
            r.reason = r.reason or "length"
        return
    taken = 0
    for row, token in zip(group.rows, next_ids):
        if row.reason is not None:
            continue
        taken += 1
        piece = row.push(int(token), tokenizer, eos_id)
        if jobs[row.job]["stream"] and (piece or row.reason is not None):
            update = updates[row.job] = updates[row.job] or {"choices": [], "done": False}
            update["choices"].append({"index": row.choice, "text": piece, "finish_reason": row.reason})
    if state is not None:
        state.add("generated_tokens", taken)
