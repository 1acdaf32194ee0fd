"""One forward of a decode step: ``model_logits`` (logits through a generation's cache), ``CacheBuffers`` and
``compiled_steps`` (the prefill and the one-token step compiled), used by ``sampling.DecodeState``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_gpt.generation.layout import MatVecMode

__all__ = ["CacheBuffers", "StepFn", "VERIFY_INDUCTOR_OPTIONS", "compiled_steps", "compiled_verify", "model_logits"]

StepFn = Callable[..., Tensor]


def model_logits(
    model: nn.Module,
    idx: Tensor,
    input_pos: Tensor,
    cache: Union[None, list, "CacheBuffers"],
    mask: Optional[Tensor],
    positions: Optional[Tensor],
    n_real: int,
    keep: int = 1,
    weights: Optional[dict[str, Tensor]] = None,
) -> Tensor:
    """Float32 logits ``(B, keep, V)`` of the last ``keep`` of the tokens ``idx`` ``(B, T)`` run at the buffer positions
    ``input_pos`` ``(T,)`` through ``cache`` (``cache=None``: ``idx`` is the whole sequence, run without a cache); ids
    from ``n_real`` on (a padded table's filler rows) get ``-inf``.

    ``mask`` ``(B, S)`` bool and ``positions`` ``(B, S)`` (position ids, for left padding) cover the whole buffer, so
    no shape depends on the step. ``weights``: the generation's decode-time layout of the model's linear weights
    (``decode_weights``), used for this call in place of the model's own (``torch.func.functional_call``; the model
    is not changed). ``cache`` may come wrapped in a ``CacheBuffers`` (the compiled step: see there).
    """
    if isinstance(cache, CacheBuffers):
        cache = cache.states
    if cache is None:  # no cache: the whole sequence, from position 0
        pos_ids = None if positions is None else positions[:, : idx.size(1)]
        kwargs: dict[str, Any] = dict(attention_mask=mask, position_ids=pos_ids, logits_to_keep=keep)
    else:
        pos_ids = None if positions is None else positions.index_select(1, input_pos)  # (B, T)
        kwargs = dict(attention_mask=mask, position_ids=pos_ids, input_pos=input_pos, cache=cache, logits_to_keep=keep)
    if weights is None:
        logits = model(idx, **kwargs)
    else:
        logits = functional_call(model, weights, (idx,), kwargs, tie_weights=False)
    logits = logits.float()
    if logits.size(-1) > n_real:
        # The one place the padding rows of a padded table are removed from decoding (sampling and beam search).
        logits = logits.masked_fill(torch.arange(logits.size(-1), device=logits.device) >= n_real, float("-inf"))
    return logits


class CacheBuffers(nn.Module):
    """A generation's cache with its tensors registered as buffers, handed to the compiled step instead of the bare
    list: ``torch.compile`` treats the buffers of a module it is given as static inputs, so the step's in-place cache
    writes do not stop it from being replayed as a CUDA graph (``mode="reduce-overhead"``). Same tensors, no copy.

    Args:
        states: the cache, one dict of tensors per layer (``model.new_cache``).
    """

    def __init__(self, states: list) -> None:
        super().__init__()
        self.states = states
        for i, state in enumerate(states):
            for name, tensor in state.items():
                self.register_buffer(f"layer{i}_{name}", tensor, persistent=False)


def _prefill_logits(*args: object) -> Tensor:
    return model_logits(*args)  # type: ignore[arg-type]  # a separate code object: compiled with a dynamic length


def _decode_logits(*args: object) -> Tensor:
    return model_logits(*args)  # type: ignore[arg-type]  # a separate code object: compiled with static shapes


def _decode_logits_matvec(*args: object) -> Tensor:
    with MatVecMode():  # one-row linear layers as row-wise reductions over the model's own weights (see there)
        return model_logits(*args)  # type: ignore[arg-type]


def _verify_logits_matvec(*args: object) -> Tensor:
    with MatVecMode():  # a few rows (k + 1 tokens): each weight row streamed once for all of them (see there)
        return model_logits(*args)  # type: ignore[arg-type]  # a separate code object: compiled for one length


def _decode_next(*args: object) -> Tensor:
    return model_logits(*args)[:, -1].argmax(-1)  # type: ignore[arg-type]  # greedy: the ids (B,), argmax compiled in


def _decode_next_matvec(*args: object) -> Tensor:
    with MatVecMode():
        return model_logits(*args)[:, -1].argmax(-1)  # type: ignore[arg-type]


def compiled_steps(
    device: torch.device, backend: str = "inductor", matvec: bool = True
) -> tuple[StepFn, StepFn, StepFn]:
    """``(prefill, decode_one, decode_one_greedy)``: ``model_logits`` compiled for the prompt (``dynamic=True``: any
    length, one compilation) and for a one-token step (``fullgraph=True``, static shapes; ``mode="reduce-overhead"`` on
    CUDA, i.e. replayed as a CUDA graph; inductor's C++ code on CPU); ``decode_one_greedy`` is
    that step returning the argmax ids ``(B,)`` of its logits instead (a greedy loop without logits processing).

    The first call of each compiles (seconds to a minute; see ``benchmarks/decode_speed.py`` for measured times);
    later generations of the same model, batch size and buffer length reuse the compiled code. ``backend``: the
    ``torch.compile`` backend (``"eager"`` checks the graph capture quickly, without code generation); ``matvec``:
    the one-token steps under ``MatVecMode`` on CPU.
    """
    mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
    prefill = torch.compile(_prefill_logits, dynamic=True, backend=backend)
    matvec = matvec and device.type == "cpu"
    steps = (_decode_logits_matvec, _decode_next_matvec) if matvec else (_decode_logits, _decode_next)
    how: dict[str, Any] = {"options": STEP_INDUCTOR_OPTIONS} if matvec and backend == "inductor" else {"mode": mode}
    try:
        decode, greedy = [torch.compile(fn, fullgraph=True, backend=backend, **how) for fn in steps]
    except RuntimeError:  # an inductor without that option (torch.compile checks the names): its default fusion
        decode, greedy = [torch.compile(fn, fullgraph=True, mode=mode, backend=backend) for fn in steps]
    return prefill, decode, greedy


#: Inductor's options for the CPU one-token step under ``MatVecMode``: write every intermediate of more than one
#: operation to its own buffer. By default inductor inlines a LayerNorm (and the residual adds before it) into the
#: next matrix-vector reduction, so it is recomputed for each of the weight's rows (50257 times for a GPT-2 head) on
#: top of streaming the weight; stored once (384 floats at batch 1) it is read back from L1. A 6 x 384 model with
#: GPT-2's vocabulary decodes a token in 4.4 instead of 5.9 ms (``benchmarks/results/decode_ablation.md``).
STEP_INDUCTOR_OPTIONS: dict[str, Any] = {"realize_opcount_threshold": 1}


#: Inductor's options for the CPU verification step (``compiled_verify``): like ``STEP_INDUCTOR_OPTIONS``, but an
#: intermediate of up to 3 operations (a product ``W * x`` of two loads, a residual add) stays inlined. With a
#: threshold of 1 the product of a several-row ``MatVecMode`` reduction is written out as an ``(out, R, in)`` buffer
#: (17.5 instead of 2.1 ms for the 24 linear layers of a 6 x 384 model at 5 rows, one thread); a LayerNorm (more
#: operations) is still stored once.
VERIFY_INDUCTOR_OPTIONS: dict[str, Any] = {"realize_opcount_threshold": 3}


def compiled_verify(device: torch.device, backend: str = "inductor") -> Optional[StepFn]:
    """``model_logits`` compiled for speculative decoding's verification pass at batch 1 on CPU: a few tokens
    (``num_draft_tokens + 1 <= layout.MATVEC_MAX_ROWS``) fed at once, with static shapes (one compilation per length,
    ``fullgraph=True``), under ``MatVecMode``: each linear layer is a reduction over the model's own ``(out, in)``
    weight rows, one accumulator per token, so each weight is streamed from memory once per pass (18 linear
    layers of a 6 x 384 model with LayerNorm and GELU between them, 5 rows, one thread: 2.38 ms, against 3.07 ms for
    MKL on the ``(in, out)`` copy; ``benchmarks/results/decode_speculative.md``).
    ``None`` off CPU (the prefill step verifies there).
    """
    if device.type != "cpu":
        return None
    how: dict[str, Any] = {"options": VERIFY_INDUCTOR_OPTIONS} if backend == "inductor" else {}
    try:
        return torch.compile(_verify_logits_matvec, fullgraph=True, dynamic=False, backend=backend, **how)
    except RuntimeError:  # an inductor without that option: its default fusion
        return torch.compile(_verify_logits_matvec, fullgraph=True, dynamic=False, backend=backend)
