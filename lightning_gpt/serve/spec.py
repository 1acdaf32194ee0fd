"""The HTTP side of ``lightning-gpt serve``: a LitServe ``LitSpec`` with every endpoint of the server.

Why our own spec: LitServe's ``OpenAISpec`` serves the chat API (``/v1/chat/completions``, messages in and out), while
a GPT trained here completes text, which is OpenAI's completions API (``/v1/completions``). A ``LitSpec`` may register
any number of routes that all feed one request queue, so ``/v1/completions`` and ``/predict`` share one inference
worker and their requests are batched together.

Each POST endpoint checks the body (``lightning_gpt.serve.requests``; a bad request is a 4xx with OpenAI's error
object and never reaches the model), draws a request number, registers a response slot in LitServe's response
buffer and puts the ``Job`` on the queue, as ``OpenAISpec`` does. It then reads the worker's updates (one JSON
object per step, ``lightning_gpt.serve.batching.decode_jobs``) and answers in one body or as server-sent events.
When the client goes away before the end (a closed stream, or a dropped connection while waiting for a whole
answer), the request is cancelled through ``SharedState`` so the worker stops generating for it.

Routes: ``POST /v1/completions``, ``POST /predict``, ``GET /v1/models``, ``GET /v1/models/{model}``, ``GET /stats``
(the worker's counters); LitServe adds ``GET /health`` and ``GET /info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from typing import Any, AsyncGenerator, AsyncIterator, Optional

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from lightning_gpt.serve.requests import Limits, RequestError, parse_completions, parse_predict
from lightning_gpt.serve.shared import SharedState

__all__ = ["CompletionsSpec"]

_OPENAI_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}
_DISCONNECT_POLL_S = 0.25  # how often a request waiting for a whole answer checks that its client is still there


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


class CompletionsSpec(LitSpec):
    """The server's routes (see the module docstring), on the HTTP processes of a ``LitServer``.

    Args:
        tokenizer: the model's tokenizer, to encode prompts and check their length before they are queued.
        limits: context length, vocabulary size, model name, most rows per request.
        state: request numbers, cancellations and the worker's counters.
        max_batch_size: requests decoded together (reported by ``/stats``).
    """

    def __init__(self, tokenizer: Any, limits: Limits, state: SharedState, max_batch_size: int = 1) -> None:
        super().__init__()
        self.api_path = "/v1/completions"  # also the key of the request queue that every route feeds
        self.tokenizer = tokenizer
        self.limits = limits
        self.state = state
        self.max_batch_size = max_batch_size
        self.created = int(time.time())
        self.add_endpoint("/v1/completions", self.completions, ["POST"])
        self.add_endpoint("/predict", self.predict, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/v1/models/{model}", self.model, ["GET"])
        self.add_endpoint("/stats", self.stats, ["GET"])

    @property
    def stream(self) -> bool:
        """Always streaming for LitServe: the worker sends one update per decoding step."""
        return True

    def __getstate__(self) -> dict[str, Any]:
        # The spec travels to the inference worker inside the API object; the worker has its own tokenizer.
        state = super().__getstate__()
        state["tokenizer"] = None
        return state

    def decode_request(self, request: Any, context_kwargs: Optional[dict] = None) -> Any:
        """The ``Job`` as queued (already checked on the HTTP side)."""
        return request

    def encode_response(self, output: Any, context_kwargs: Optional[dict] = None) -> Any:
        """The worker's updates, unchanged."""
        yield from output

    # ---------------------------------------------------------------------------------------------- routes
    async def completions(self, request: Request) -> Response:
        """``POST /v1/completions``: OpenAI's completions API (``stream: true`` answers with server-sent events)."""
        return await self._serve(request, parse_completions)

    async def predict(self, request: Request) -> Response:
        """``POST /predict``: ``prompt`` plus ``GenerationConfig`` fields; ``generate_text``'s results."""
        return await self._serve(request, parse_predict)

    async def models(self) -> Response:
        """``GET /v1/models``: the one model this server serves."""
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, model: str) -> Response:
        """``GET /v1/models/{model}``."""
        if model != self.limits.model_name:
            err = RequestError(f"The model {model!r} does not exist here.", "model", 404, "model_not_found")
            return JSONResponse(err.body(), status_code=404)
        return JSONResponse(self._model_card())

    async def stats(self) -> Response:
        """``GET /stats``: the worker's counters (requests, generated tokens, batches, largest batch, cancellations)."""
        return JSONResponse(
            dict(self.state.counters(), max_batch_size=self.max_batch_size, model=self.limits.model_name)
        )

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.limits.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "lightning-gpt",
            "max_model_len": self.limits.block_size,
        }

    # ---------------------------------------------------------------------------------------------- plumbing
    async def _serve(self, request: Request, parse: Any) -> Response:
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except ValueError as err:
                raise RequestError(f"The request body is not valid JSON ({err}).") from None
            job = parse(body, self.tokenizer, self.limits)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=err.status)
        job["seq"] = self.state.next_seq()
        uid, queue, event = self._submit(job)
        if job["stream"]:
            make = self._completion_events if job["endpoint"] == "completions" else self._predict_events
            events = self._events(job, uid, make(job, uid, queue, event))
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            updates = await self._collect(request, job, uid, queue, event)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=err.status)
        if updates is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        last = updates[-1]
        return JSONResponse(
            self._completion(job, last) if job["endpoint"] == "completions" else self._results(job, last)
        )

    def _submit(self, job: dict[str, Any]) -> tuple[str, deque, asyncio.Event]:
        uid = str(uuid.uuid4())
        queue: deque = deque()
        event = asyncio.Event()
        # Registered before the job is queued, so that no update can arrive for an unknown request.
        self.response_buffer[uid] = ResponseBufferItem(event=event, response_queue=queue)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
        return uid, queue, event

    async def _updates(self, uid: str, queue: deque, event: asyncio.Event) -> AsyncIterator[dict[str, Any]]:
        """The worker's updates for one request, up to its last (``done``); errors as ``RequestError``."""
        async for data, status in self.data_streamer(queue, event, send_status=True):
            if status == LitAPIStatus.ERROR:
                if isinstance(data, HTTPException):  # LitServe's own: 504 when the request waited too long
                    raise RequestError(str(data.detail), status=data.status_code)
                raise RequestError("The model worker failed on this request; see the server's log.", status=500)
            if data is None:  # a step in which other requests of the batch got text
                continue
            update = json.loads(data)
            if "error" in update:
                raise RequestError(update["error"], status=update["status"])
            yield update
            if update.get("done"):
                return
        raise RequestError("The model worker ended this request without a result; see the server's log.", status=500)

    def _release(self, job: dict[str, Any], uid: str, finished: bool) -> None:
        self.response_buffer.pop(uid, None)
        if not finished:
            self.state.cancel(job["seq"])  # the worker drops the request's rows before its next step

    async def _collect(
        self, request: Request, job: dict[str, Any], uid: str, queue: deque, event: asyncio.Event
    ) -> Optional[list[dict[str, Any]]]:
        """Every update of a request that does not stream; ``None`` if the client disconnected first."""

        async def gather() -> list[dict[str, Any]]:
            return [u async for u in self._updates(uid, queue, event)]

        task = asyncio.ensure_future(gather())
        finished = False
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
                if done:
                    updates = task.result()
                    finished = True
                    return updates
                if await request.is_disconnected():
                    return None
        finally:
            if not task.done():
                task.cancel()
            self._release(job, uid, finished)

    async def _events(self, job: dict[str, Any], uid: str, chunks: AsyncGenerator[str, None]) -> AsyncIterator[str]:
        """A streamed response: the endpoint's ``chunks``, then ``[DONE]`` (or the error); the request is released
        however it ends, and cancelled in the worker unless it finished (a client that went away)."""
        finished = False
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
            finished = True
            yield "data: [DONE]\n\n"
        except RequestError as err:
            finished = True
            yield _sse(err.body())
        finally:
            self._release(job, uid, finished)

    async def _completion_events(
        self, job: dict[str, Any], uid: str, queue: deque, event: asyncio.Event
    ) -> AsyncGenerator[str, None]:
        """OpenAI's streaming format: ``text_completion`` chunks and a usage chunk if asked (``_events`` ends it)."""
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = job["model"]
        if job["echo"]:
            echoed = [self._prompt_text(job, i) for i in range(len(job["prompts"]) * job["n"])]
            yield _sse(dict(head, choices=[_choice(i, t, None) for i, t in enumerate(echoed)]))
        async for update in self._updates(uid, queue, event):
            choices = [_choice(c["index"], c["text"], c["finish_reason"]) for c in update["choices"]]
            if choices:
                yield _sse(dict(head, choices=choices))
            if update.get("done") and job["include_usage"]:
                yield _sse(dict(head, choices=[], usage=update["usage"]))

    async def _predict_events(
        self, job: dict[str, Any], uid: str, queue: deque, event: asyncio.Event
    ) -> AsyncGenerator[str, None]:
        """``/predict`` streaming: ``{"index", "text"}`` pieces, then per choice ``{"index", "finish_reason",
        "tokens"}``, then ``{"usage", "batch_requests"}`` (``_events`` ends it)."""
        async for update in self._updates(uid, queue, event):
            for c in update["choices"]:
                if c["text"]:
                    yield _sse({"index": c["index"], "text": c["text"]})
            if update.get("done"):
                for c in update["final"]:
                    yield _sse({"index": c["index"], "finish_reason": c["finish_reason"], "tokens": c["tokens"]})
                yield _sse({"usage": update["usage"], "batch_requests": update["batch_requests"]})

    def _prompt_text(self, job: dict[str, Any], choice: int) -> str:
        p = choice // job["n"]
        text = job["prompt_texts"][p]
        return text if text is not None else self.tokenizer.decode(job["prompts"][p])

    def _completion(self, job: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for c in last["choices"]:
            text = (self._prompt_text(job, c["index"]) if job["echo"] else "") + c["text"]
            choices.append(_choice(c["index"], text, c["finish_reason"]))
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": job["model"],
            "choices": choices,
            "usage": last["usage"],
        }

    def _results(self, job: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
        results = [
            {
                "prompt": self._prompt_text(job, c["index"]),
                "completion": c["text"],
                "tokens": c["tokens"],
                "finish_reason": c["finish_reason"],
            }
            for c in last["choices"]
        ]
        return {"results": results, "usage": last["usage"], "batch_requests": last["batch_requests"]}


def _choice(index: int, text: str, reason: Optional[str]) -> dict[str, Any]:
    return {
        "text": text,
        "index": index,
        "logprobs": None,
        "finish_reason": None if reason is None else _OPENAI_REASONS.get(reason, reason),
    }
