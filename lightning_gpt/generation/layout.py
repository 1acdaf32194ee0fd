"""How a decode step reads a model's linear weights on CPU in float32 (at batch 1, each is one matrix-vector product).

* Eager (and compiled at batch 2-8): ``decode_weights`` gives a generation its own copies, stored ``(in, out)``, and
  ``release_decode_weights`` hands their memory back for the model's next generation. ``F.linear(x, W)`` with such a
  ``W`` runs ``addmm(b, x, W.t())`` over a contiguous ``(in, out)`` matrix, which streams faster than from
  ``nn.Linear``'s ``(out, in)`` layout (a 50257 x 384 LM head: 22-27 vs 13-14 GB/s on one thread here).
* Compiled at batch 1: no copy. ``MatVecMode`` makes the compiled one-token step compute each linear layer as a
  multiply and a sum over the weight's own ``(out, in)`` rows, which inductor turns into a vectorized C++ reduction
  that streams those rows as fast as the copy would.
"""

from __future__ import annotations

import threading
import weakref
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "DECODE_LAYOUT_MIN_BYTES",
    "DECODE_LAYOUT_MIN_TOKENS",
    "DECODE_LAYOUT_REUSE",
    "MATVEC_MAX_ROWS",
    "MatVecMode",
    "decode_weights",
    "free_decode_weights",
    "release_decode_weights",
]

#: No decode-time layout below this many bytes of linear weights (they sit in the CPU's caches, where the layout gains
#: less than ``functional_call`` costs per eager step, ~50 us; a 2 x 128 model decodes a token in ~350 us) or for fewer
#: new tokens (the copy costs what ~10 (into reused memory) to ~35 (fresh) eager tokens of faster mat-vecs save, at
#: ~2.3 ms a token for a 6 x 384 model with GPT-2's vocabulary).
DECODE_LAYOUT_MIN_BYTES, DECODE_LAYOUT_MIN_TOKENS = 8 << 20, 32

#: Keep a finished generation's copies (their memory, not their values) for the model's next generation. Writing into
#: memory already mapped costs 2-3x less than a fresh allocation, whose first touch of every page is a page fault:
#: 22 vs 55 ms for a 50257 x 384 head, one thread (``benchmarks/results/decode_compiled.md``). ``False``: a fresh
#: allocation every time, nothing kept between generations.
DECODE_LAYOUT_REUSE = True

# One spare set of copies per model (the last released), weakly keyed: it goes with the model.
_SPARE: "weakref.WeakKeyDictionary[nn.Module, dict[str, Tensor]]" = weakref.WeakKeyDictionary()
_SPARE_LOCK = threading.Lock()


def decode_weights(
    model: nn.Module, batch_size: int, new_tokens: int = DECODE_LAYOUT_MIN_TOKENS
) -> Optional[dict[str, Tensor]]:
    """The generation's own layout of the model's ``nn.Linear`` weights, when it speeds up decoding, else ``None``:
    ``{"<module>.weight": W}`` where each ``W`` has the weight's shape ``(out, in)`` and current values but is stored
    transposed, ``(in, out)`` contiguous (like ``weight.t().contiguous().t()``).

    ``step.model_logits`` runs the model with these weights in place of its own (``torch.func.functional_call``):
    the model, its parameters and its ``state_dict`` are untouched. A 6 x 384 model with GPT-2's vocabulary decodes a
    token 1.28x (eager) and 1.39x (compiled) faster (``benchmarks/results/decode_layout.md``).

    The values are copied from the current weights every time, so a training step between two generations is never
    missed (telling whether a weight changed means comparing it with its copy, which costs more than copying it). The
    memory is the model's spare set when one was released (``release_decode_weights``; ``DECODE_LAYOUT_REUSE``), else
    a fresh allocation. Cost: ~25 ms per generation into a spare set, ~80 ms fresh (a 6 x 384 model with a 50257-token
    head, one thread), and one copy of the linear weights in memory, kept after the generation as the model's spare set
    (``free_decode_weights`` drops it). Float32 on CPU, batch <= 8, at least ``DECODE_LAYOUT_MIN_BYTES`` of linear
    weights (bfloat16 kernels and CUDA gain nothing from it) and at least ``DECODE_LAYOUT_MIN_TOKENS`` new tokens.

    Args:
        model: the model being decoded.
        batch_size: rows decoded together.
        new_tokens: the most tokens the generation will decode.

    Returns:
        The weights by ``named_parameters`` name (this generation's alone until released), or ``None`` (the model's
        own weights are used).
    """
    if batch_size > 8 or new_tokens < DECODE_LAYOUT_MIN_TOKENS:
        return None
    linears: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, nn.Linear) or not isinstance(weight, Tensor):
            continue
        if type(weight.data) is not torch.Tensor or weight.device.type != "cpu" or weight.dtype != torch.float32:
            return None  # a sharded DTensor, another device or dtype: the model's own layout
        linears[f"{name}.weight" if name else "weight"] = weight.detach()
    if sum(w.numel() * w.element_size() for w in linears.values()) < DECODE_LAYOUT_MIN_BYTES:
        return None
    with _SPARE_LOCK:
        spare = _SPARE.pop(model, None)
    if spare is None or {k: v.shape for k, v in spare.items()} != {k: w.shape for k, w in linears.items()}:
        with torch.inference_mode(False):  # plain tensors: written in place later, in or out of inference mode
            spare = {k: torch.empty(w.size(1), w.size(0), dtype=w.dtype).t() for k, w in linears.items()}
    with torch.no_grad():
        for key, weight in linears.items():
            spare[key].copy_(weight)  # (out, in) values into (in, out) storage
    return spare


def release_decode_weights(model: nn.Module, weights: Optional[dict[str, Tensor]]) -> None:
    """Hand a finished generation's ``decode_weights`` back: they become the model's spare set (replacing any), whose
    memory the next generation reuses. The caller must not use ``weights`` afterwards. No-op for ``None`` or when
    ``DECODE_LAYOUT_REUSE`` is off."""
    if weights is not None and DECODE_LAYOUT_REUSE:
        with _SPARE_LOCK:
            _SPARE[model] = weights


def free_decode_weights(model: nn.Module) -> None:
    """Drop the model's spare set of decode-time weights (its memory is freed once no generation uses it)."""
    with _SPARE_LOCK:
        _SPARE.pop(model, None)


#: The most rows (``x.numel() // in``) ``MatVecMode`` computes as a reduction: speculative decoding's verification
#: pass feeds ``num_draft_tokens + 1`` tokens, and each weight row is reused from L1 for all of them.
MATVEC_MAX_ROWS = 8


class MatVecMode(TorchFunctionMode):
    """Inside it, ``F.linear(x, W, b)`` of at most ``MATVEC_MAX_ROWS`` rows ``x`` (``R = x.numel() // in``) in float32
    on CPU is computed as ``(W * x[r]).sum(-1)`` ``(out,)`` for each row ``r``, stacked and plus ``b``: shape
    ``(..., in)`` -> ``(..., out)``, the same values up to the order of the additions (float32 rounding, ~1e-6
    relative). Other calls run unchanged.

    For the compiled one-token step (``step.compiled_steps``): traced by dynamo, this is not a matrix multiply but a
    row-wise reduction, which inductor compiles to vectorized C++ that streams ``W`` in ``nn.Linear``'s own
    ``(out, in)`` layout faster than MKL streams the transposed copy: the 25 weights of a 6 x 384 model with GPT-2's
    vocabulary in 4.0-4.2 ms as compiled reductions against 5.1-5.6 ms for ``x @ W`` on ``(in, out)`` copies and
    8.2 ms for ``F.linear`` on the own layout (one thread; ``benchmarks/results/decode_ablation.md``). So a compiled
    batch-1 generation needs no ``decode_weights`` copy. With several rows (speculative decoding's verification pass,
    ``step.compiled_verify``) inductor fuses the ``R`` reductions over the same weight rows into one loop with ``R``
    independent accumulators: each weight vector is loaded once for all ``R`` rows (24 linear layers of a 6 x 384
    model with LayerNorm and GELU between them, 5 rows, one thread: 2.7 ms, against 3.0 ms for one ``(out, R, in)``
    reduction, whose ``R`` accumulations ran one after the other, and 4.6 ms for MKL's ``F.linear``). Eager, the same
    expression would materialize ``x * W``: not for eager use.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            n_in = x.size(-1)
            rows = x.numel() // max(1, n_in)
            if 1 <= rows <= MATVEC_MAX_ROWS and weight.dtype == torch.float32 and weight.device.type == "cpu":
                if rows == 1:
                    y = (x.unsqueeze(-2) * weight).sum(-1)  # (..., out)
                else:  # R reductions over the same weight rows: one loop, each weight row streamed once
                    x2 = _stored(x.reshape(rows, n_in))  # (R, in), a buffer: each product stays two loads
                    y = torch.stack([(weight * x2[r]).sum(-1) for r in range(rows)])  # (R, out)
                    y = _stored(y).reshape(*x.shape[:-1], -1)  # (..., out)
                return y if bias is None else y + bias
        return func(*args, **kwargs)


def _stored(t: Tensor) -> Tensor:
    """``t`` as a contiguous tensor that inductor writes to a buffer of its own (``prims.inductor_force_stride_order``;
    eager: a contiguous copy): then what follows reads it with unit stride, and nothing before it is inlined into a
    several-row ``MatVecMode`` reduction (which makes inductor write out the whole ``(out, R, in)`` product)."""
    if not torch.compiler.is_compiling():
        return t.contiguous()
    strides = [1]
    for size in reversed(t.shape[1:]):
        strides.insert(0, strides[0] * size)
    return torch.ops.prims.inductor_force_stride_order(t, strides)  # (registered once dynamo runs)
