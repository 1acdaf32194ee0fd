"""Request bodies of ``POST /v1/completions`` and ``POST /predict``, checked and turned into one plain ``Job`` dict.

Everything a client can get wrong is found here, in the HTTP process, before the request reaches the model: the
worker then decodes jobs that are known to be valid, and a bad request costs the batch nothing. Each error is a
``RequestError`` that names the field (OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``).

A ``Job`` is a dict (it crosses a process boundary through LitServe's queue, so it stays plain data):

* ``seq``: the request number (``SharedState.next_seq``), used to cancel it;
* ``endpoint``: ``"completions"`` or ``"predict"``; ``stream``: send pieces as they are generated;
* ``prompts``: the token ids of each prompt; ``prompt_texts``: their text (``None`` for a prompt given as ids);
* ``n``: sequences per prompt; rows are prompt-major (choice ``i`` is prompt ``i // n``), as OpenAI numbers choices;
* ``max_new_tokens``: resolved (never ``None``); ``stop``: stop strings and/or token-id lists, or ``None``;
* ``settings``: the other ``GenerationConfig`` fields (``do_sample``, ``temperature``, ..., ``seed``);
* ``echo``, ``include_usage``, ``model``: OpenAI options for the response.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from lightning_gpt.config import is_int
from lightning_gpt.generation import GenerationConfig

__all__ = ["Limits", "RequestError", "parse_completions", "parse_predict"]

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(GenerationConfig)}
# GenerationConfig fields that a Job carries outside ``settings``.
_JOB_FIELDS = ("max_new_tokens", "stop", "num_return_sequences")

# ``/v1/completions`` fields: the OpenAI completions API, plus three sampling settings of ``GenerationConfig`` that
# the API lacks (as vLLM accepts them too). Fields listed in ``_NEUTRAL`` are accepted only at their neutral value.
COMPLETIONS_FIELDS = (
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "echo",
    "user",
    "logprobs",
    "best_of",
    "suffix",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "top_k",
    "min_p",
    "repetition_penalty",
)
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (),
    "best_of": (1,),
    "suffix": ("",),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
}
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the completions API


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a request may ask of this server.

    Args:
        block_size: the model's context (prompt plus new tokens), in tokens.
        vocab_size: token ids are in ``[0, vocab_size)``.
        model_name: the id under which ``/v1/models`` lists the model (the ``model`` field must name it).
        max_rows: the most sequences (prompts x ``n``) one request may ask for.
    """

    block_size: int
    vocab_size: int
    model_name: str
    max_rows: int = 64


class RequestError(ValueError):
    """A request the server refuses: HTTP ``status`` with OpenAI's error object naming the field (``param``).

    Args:
        message: one sentence or two: the bad value and how to fix it.
        param: the request field at fault.
        status: the HTTP status (400 unless said otherwise).
        code: OpenAI's error code (e.g. ``"model_not_found"``).
    """

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400, code: Optional[str] = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def body(self) -> dict[str, Any]:
        """The JSON response body."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(f"The request body must be a JSON object, got {type(body).__name__}.")
    return body


def _check_fields(body: dict[str, Any], allowed: Any, where: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise RequestError(
            f"Unknown field {unknown[0]!r} for {where}; the fields are: {', '.join(sorted(allowed))}.", param=unknown[0]
        )


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a number, got {value!r}.", param=name)
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {value!r}.", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, default: Optional[int], low: int) -> Optional[int]:
    value = body.get(name)
    if value is None:
        return default
    if not is_int(value) or value < low:
        raise RequestError(f"{name} must be an integer >= {low}, got {value!r}.", param=name)
    return int(value)


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {value!r}.", param=name)
    return value


def _encode(tokenizer: Any, text: str) -> list[int]:
    ids = list(tokenizer.encode(text))
    if not ids:
        bos = getattr(tokenizer, "bos_id", None)
        if bos is None:
            raise RequestError(
                "The prompt encodes to no tokens and the tokenizer has no BOS token to start from: give a non-empty "
                "prompt.",
                param="prompt",
            )
        ids = [bos]  # unconditional generation starts from BOS, as generate_text does
    return ids


def _prompts(value: Any, tokenizer: Any, limits: Limits, allow_ids: bool) -> tuple[list[list[int]], list[Any]]:
    """The prompts as token ids (and their text): a string, a list of strings, or (``allow_ids``) token ids."""
    if isinstance(value, str):
        return [_encode(tokenizer, value)], [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return [_encode(tokenizer, p) for p in value], list(value)
    if allow_ids and isinstance(value, list) and value and all(is_int(t) for t in value):
        value = [value]
    if allow_ids and isinstance(value, list) and value and all(isinstance(p, list) and p for p in value):
        for row in value:
            bad = next((t for t in row if not is_int(t) or not 0 <= t < limits.vocab_size), None)
            if bad is not None or not all(is_int(t) for t in row):
                raise RequestError(
                    f"prompt token id {bad!r} is not an integer in [0, {limits.vocab_size}).", param="prompt"
                )
        return [list(map(int, row)) for row in value], [None] * len(value)
    forms = (
        "a string, a list of strings, a list of token ids or a list of such lists"
        if allow_ids
        else ("a string or a non-empty list of strings")
    )
    raise RequestError(f"prompt must be {forms}; got {str(value)[:80]!r}.", param="prompt")


def _check_context(prompts: list[list[int]], max_new: int, limits: Limits, new_name: str, padded: bool) -> None:
    """Each prompt plus ``max_new`` fits the context (``padded``: the longest prompt, as a left-padded batch)."""
    block = limits.block_size
    longest = max(len(p) for p in prompts)
    for ids in [p for p in prompts if len(p) == longest][:1] if padded else prompts:
        if len(ids) >= block:
            raise RequestError(
                f"The prompt is {len(ids)} tokens, which leaves no room in the model's context of {block} tokens: "
                f"shorten it to at most {block - max_new} tokens.",
                param="prompt",
            )
        if len(ids) + max_new > block:
            raise RequestError(
                f"The prompt ({len(ids)} tokens) plus {new_name}={max_new} is {len(ids) + max_new} tokens, more than "
                f"the model's context of {block} tokens: lower {new_name} to at most {block - len(ids)}.",
                param=new_name,
            )


def _rows(n_prompts: int, n: int, limits: Limits, n_name: str) -> None:
    if n_prompts * n > limits.max_rows:
        raise RequestError(
            f"The request asks for {n_prompts * n} sequences ({n_prompts} prompt(s) x {n_name}={n}); this server "
            f"decodes at most {limits.max_rows} per request (lightning-gpt serve --max_rows_per_request).",
            param=n_name,
        )


def _config(fields: dict[str, Any], names: dict[str, str]) -> GenerationConfig:
    """``GenerationConfig`` from request fields; its ``ValueError`` names the field as the request spells it."""
    try:
        return GenerationConfig(**fields)
    except ValueError as err:
        message = str(err)
        first = message.split(" ", 1)[0].strip(":,.=")
        param = names.get(first, first if first in _CONFIG_FIELDS else None)
        for ours, theirs in names.items():
            message = message.replace(ours, theirs)
        raise RequestError(message, param=param) from None


def _settings(config: GenerationConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _JOB_FIELDS}


def parse_completions(body: Any, tokenizer: Any, limits: Limits) -> dict[str, Any]:
    """Check a ``POST /v1/completions`` body (OpenAI's completions API) and turn it into a ``Job``.

    Args:
        body: the decoded JSON body.
        tokenizer: the model's tokenizer (``encode``, ``bos_id``).
        limits: the context, vocabulary, model name and row limit.

    Returns:
        The ``Job`` (``seq`` still 0).

    Raises:
        RequestError: an unknown field, a wrong type, a value out of range, another model's name (404), a prompt
            longer than the context or ``max_tokens`` past it, an unsupported option set to a non-neutral value.
    """
    body = _object(body)
    _check_fields(body, COMPLETIONS_FIELDS, "/v1/completions")
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or value not in neutral):
            raise RequestError(f"{name}={value!r} is not supported by this server; leave it out.", param=name)
    model = body.get("model")
    if model is not None and model != limits.model_name:
        raise RequestError(
            f"The model {model!r} does not exist here; this server serves {limits.model_name!r} (GET /v1/models).",
            param="model",
            status=404,
            code="model_not_found",
        )
    if "prompt" not in body:
        raise RequestError("prompt is required.", param="prompt")
    prompts, texts = _prompts(body["prompt"], tokenizer, limits, allow_ids=True)
    max_tokens = _integer(body, "max_tokens", DEFAULT_MAX_TOKENS, 1)
    assert max_tokens is not None
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    n = _integer(body, "n", 1, 1)
    assert n is not None
    stop = body.get("stop")
    if stop is not None and not (
        (isinstance(stop, str) and stop)
        or (isinstance(stop, list) and 0 < len(stop) <= 4 and all(isinstance(s, str) and s for s in stop))
    ):
        raise RequestError(f"stop must be a non-empty string or a list of 1 to 4 of them, got {stop!r}.", param="stop")
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not (
        isinstance(options, dict)
        and set(options) <= {"include_usage"}
        and isinstance(options.get("include_usage", False), bool)
    ):
        raise RequestError(
            f"stream_options must be {{'include_usage': true|false}}, got {options!r}.", param="stream_options"
        )
    if options is not None and not stream:
        raise RequestError("stream_options is only allowed with stream=true.", param="stream_options")
    if "user" in body and body["user"] is not None and not isinstance(body["user"], str):
        raise RequestError(f"user must be a string, got {body['user']!r}.", param="user")
    _rows(len(prompts), n, limits, "n")
    _check_context(prompts, max_tokens, limits, "max_tokens", padded=False)
    sampling = temperature > 0
    fields: dict[str, Any] = {
        "max_new_tokens": max_tokens,
        "do_sample": sampling,
        "temperature": temperature if sampling else 1.0,
        "top_p": top_p if sampling and top_p < 1.0 else None,
        "seed": body.get("seed"),
        "stop": stop,
    }
    if top_p == 0.0:
        raise RequestError("top_p must be > 0 (1 keeps the whole distribution), got 0.", param="top_p")
    for name in ("top_k", "min_p", "repetition_penalty"):
        if body.get(name) is not None:
            fields[name] = body[name]
    if not sampling:
        fields.update(top_k=None, min_p=None)  # greedy: only the repetition penalty changes the choice
    config = _config(fields, {"max_new_tokens": "max_tokens"})
    return {
        "seq": 0,
        "endpoint": "completions",
        "stream": stream,
        "prompts": prompts,
        "prompt_texts": texts,
        "n": n,
        "max_new_tokens": max_tokens,
        "stop": config.stop,
        "settings": _settings(config),
        "echo": _boolean(body, "echo"),
        "include_usage": bool(options and options.get("include_usage")),
        "model": limits.model_name,
    }


def parse_predict(body: Any, tokenizer: Any, limits: Limits) -> dict[str, Any]:
    """Check a ``POST /predict`` body (``prompt``, ``stream`` and ``GenerationConfig`` fields) into a ``Job``.

    The settings mean what they mean for ``lightning_gpt.generation.generate_text`` (greedy by default;
    ``max_new_tokens`` omitted or null fills the context after the longest prompt), and so do the results.

    Args:
        body: the decoded JSON body.
        tokenizer: the model's tokenizer.
        limits: the context, vocabulary, model name and row limit.

    Returns:
        The ``Job`` (``seq`` still 0).

    Raises:
        RequestError: an unknown field, a wrong type or value (``GenerationConfig``'s own checks), a prompt longer
            than the context or ``max_new_tokens`` past it.
    """
    body = _object(body)
    _check_fields(body, _CONFIG_FIELDS | {"prompt", "stream"}, "/predict")
    if "prompt" not in body:
        raise RequestError("prompt is required.", param="prompt")
    prompts, texts = _prompts(body["prompt"], tokenizer, limits, allow_ids=False)
    stream = _boolean(body, "stream")
    fields = {k: v for k, v in body.items() if k not in ("prompt", "stream")}
    config = _config(fields, {})
    if config.num_beams > 1 and stream:
        raise RequestError("Beam search (num_beams > 1) cannot stream: use stream=false.", param="stream")
    n = config.num_return_sequences
    _rows(len(prompts), n, limits, "num_return_sequences")
    longest = max(len(p) for p in prompts)
    max_new = config.max_new_tokens if config.max_new_tokens is not None else max(1, limits.block_size - longest)
    _check_context(prompts, max_new, limits, "max_new_tokens", padded=True)
    return {
        "seq": 0,
        "endpoint": "predict",
        "stream": stream,
        "prompts": prompts,
        "prompt_texts": texts,
        "n": n,
        "max_new_tokens": max_new,
        "stop": config.stop,
        "settings": _settings(config),
        "echo": False,
        "include_usage": False,
        "model": limits.model_name,
    }
