"""Build a model on the meta device and give its (FSDP2-sharded) parameters the values a normal build would have.

torchtitan's order (``docs/fsdp.md``, "meta-device initialization"): build under ``torch.device("meta")`` (no memory),
``fully_shard``, then ``to_empty`` and initialize. torchtitan initializes with its own ``init_weights``; here the
values must equal those of ``GPT(config)`` built in one process after the same ``seed_everything``, whose constructor
draws from torch's global random generator in a fixed order (``nn.Linear``'s Kaiming init, then GPT-2's normal init).

``record_meta_build`` builds under a ``TorchFunctionMode`` that sees every in-place initializer (``normal_``,
``torch.nn.init.kaiming_uniform_``, ``fill_``, ``zero_``...) called on a meta parameter. It saves the generator state
and runs the same call on a temporary tensor of the same shape on the real device, so the generator advances exactly
as in a normal build; the temporary is freed at once (the peak is the largest single tensor, e.g. the embedding). After
sharding, ``materialize_recorded`` replays each parameter's calls on one full-size temporary at a time, starting from
the saved states, and keeps only this rank's shard (``distribute_tensor(..., src_data_rank=None)``: no communication).
Every rank draws the same values (Lightning seeds every rank alike), so the shards are those of one model, and the
generator ends where a normal build leaves it.

What cannot be replayed (an initializer reading another tensor, a view of a parameter, an explicit ``generator=``, a
buffer created on meta, a device whose generator state is not cpu/cuda) makes ``record_meta_build`` return ``None``
after restoring the generator: the caller then builds the model in full (the old way; more memory, same values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_gpt.training._torch_internals import is_view

__all__ = ["Recording", "materialize_recorded", "record_meta_build"]

_NOT_VALUES = {"requires_grad_", "share_memory_", "retain_grad", "detach_", "set_", "resize_", "as_strided_"}


def _get_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@dataclass
class _Call:
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    key: Optional[str]  # the keyword the tensor is passed by (torch.nn.init), or None: the first argument
    state: Tensor  # the generator state before the call

    def run(self, tensor: Tensor) -> None:
        if self.key is None:
            self.func(tensor, *self.args, **self.kwargs)
        else:
            self.func(*self.args, **{self.key: tensor}, **self.kwargs)


@dataclass
class Recording:
    """The initializer calls of a meta build, per parameter name, and the generator state after the build.

    Attributes:
        device: the device whose generator the build drew from (where a normal build would have run).
        calls: parameter name (every name of a tied parameter) -> its in-place calls, in order.
        end_state: the generator state a normal build leaves.
    """

    device: torch.device
    calls: dict[str, list[_Call]] = field(default_factory=dict)
    end_state: Optional[Tensor] = None


class _Recorder(TorchFunctionMode):
    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.calls: dict[int, list[_Call]] = {}
        self.targets: list[Tensor] = []  # kept alive, so that an id is never reused by another tensor
        self.problem: Optional[str] = None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        key = None if args else "tensor"  # torch.nn.init's functions pass the tensor by keyword
        target = args[0] if args else kwargs.get("tensor")
        if (
            isinstance(target, Tensor)
            and target.is_meta
            and name.endswith("_")
            and not name.startswith("_")
            and name not in _NOT_VALUES
        ):
            rest = {k: v for k, v in kwargs.items() if k != key}
            self._record(func, name, target, args[1:], rest, key)
        return func(*args, **kwargs)

    def _record(self, func: Any, name: str, target: Tensor, args: tuple, kwargs: dict, key: Optional[str]) -> None:
        others = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        if is_view(target):
            self.problem = f"{name} on a view of a parameter"
        elif any(a.is_meta for a in others):
            self.problem = f"{name} reads another meta tensor"
        elif kwargs.get("generator") is not None:
            self.problem = f"{name} with its own generator"
        if self.problem is not None:
            return
        # Any call may draw (``kaiming_uniform_`` calls ``uniform_`` out of this mode's sight): save the generator
        # state, and advance it as the real call would, by the same call on a temporary of the same shape.
        call = _Call(func, args, kwargs, key, _get_state(self.device))
        call.run(torch.empty(target.shape, dtype=target.dtype, device=self.device))
        if id(target) not in self.calls:
            self.targets.append(target)
        self.calls.setdefault(id(target), []).append(call)


def record_meta_build(build: Callable[[], nn.Module], device: torch.device) -> Optional[tuple[nn.Module, Recording]]:
    """Build ``build()`` on the meta device, recording its parameters' initialization (see the module docstring).

    Args:
        build: makes the model (e.g. ``lambda: GPT(config)``).
        device: the device a normal build would run on (its generator is the one advanced).

    Returns:
        ``(model on meta, recording)``, or ``None`` (generator restored) when the build cannot be replayed.
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return None
    start = _get_state(device)
    recorder = _Recorder(device)
    with torch.device("meta"), recorder:
        model = build()
    meta_buffers = [n for n, b in model.named_buffers() if b.is_meta]
    if recorder.problem is None and meta_buffers:
        recorder.problem = f"buffer {meta_buffers[0]} made on the meta device"
    if recorder.problem is not None:
        _set_state(device, start)
        return None
    recording = Recording(device, end_state=_get_state(device))
    for name, param in model.named_parameters(remove_duplicate=False):
        recording.calls[name] = recorder.calls.get(id(param), [])
    return model, recording


def materialize_recorded(model: nn.Module, recording: Recording) -> None:
    """Allocate ``model``'s (sharded) parameters on ``recording.device`` and fill them with the recorded values.

    Args:
        model: the model from ``record_meta_build``, ``fully_shard`` applied (or not: plain tensors are filled whole).
        recording: its recording.

    Raises:
        RuntimeError: a parameter without any recorded initializer (its memory would stay uninitialized).
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    device = recording.device
    first: dict[int, str] = {}
    ties = []  # (module, attribute, name of the parameter it shares): to_empty of a plain module unties them
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            owner, _, attribute = name.rpartition(".")
            ties.append((model.get_submodule(owner), attribute, first[id(param)]))
        first.setdefault(id(param), name)
    model.to_empty(device=device)
    for module, attribute, name in ties:
        setattr(module, attribute, model.get_parameter(name))
    with torch.no_grad():
        for name, param in model.named_parameters():
            calls = recording.calls.get(name)
            if not calls:
                raise RuntimeError(f"{name} has no initializer to replay; it would hold uninitialized memory.")
            full = torch.empty(param.shape, dtype=param.dtype, device=device)
            for call in calls:
                _set_state(device, call.state)
                call.run(full)
            if isinstance(param, DTensor):
                param.copy_(distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None))
            else:
                param.copy_(full)
            del full
    if recording.end_state is not None:
        _set_state(device, recording.end_state)
