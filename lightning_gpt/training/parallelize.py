"""How ``GPTModule`` lays a ``GPT`` out for training: activation checkpointing, FSDP2 sharding, ``torch.compile``.

One order, as torchtitan's ``parallelize.py`` documents its own (``apply_ac``, ``apply_compile``, ``apply_fsdp``):

1. **Activation checkpointing** of each ``Block`` (``FSDP2Strategy(activation_checkpointing=True)``), composable and
   in place, so parameter names do not change.
2. **Compile** (``GPTModule(compile=True)``): the *training* forward is compiled; decoding (``predict``, ``generate``,
   the samples) keeps the eager model, whose KV-cache steps have other shapes at every token. torchtitan compiles each
   block in place before sharding; here the compiled callable is a wrapper over the whole model (``CompiledForward``),
   made at the first training step, so it is taken over the model as step 3 left it (under FSDP2: the sharded model,
   FSDP2's hooks traced with it), and the checkpoint keeps the plain ``GPT``'s parameter names (no ``_orig_mod.``).
3. **FSDP2** (``ModelParallelStrategy``, e.g. ``FSDP2Strategy``): ``fully_shard`` each ``Block``, then the root, over
   the data-parallel mesh, with the strategy's ``param_dtype`` / ``reduce_dtype`` / ``reshard_after_forward``.

Steps 1 and 3 run in ``GPTModule.configure_model`` (once: a sharded model is marked); step 2 at the first step.

Under FSDP2 the model is built on the meta device first (``build_parallel``; torchtitan's order): build on meta ->
steps 1 and 3 -> ``to_empty`` + initialization (``lightning_gpt.training.meta_init``), so no rank ever holds the whole
model, and the weights equal those of ``GPT(config)`` built in one process after the same seed. With ``init_from``
(weights to load) the model is built in full and then sharded.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch
from torch import nn

from lightning_gpt.model import GPT, Block
from lightning_gpt.training._torch_internals import checkpoint_activations

__all__ = ["CompiledForward", "apply_fsdp2", "build_parallel", "is_sharded", "parallelize"]

log = logging.getLogger(__name__)

_SHARDED = "_lightning_gpt_sharded"  # set on a GPT once it is sharded: configure_model runs more than once per process


def is_sharded(model: Optional[nn.Module]) -> bool:
    """Whether ``parallelize`` already sharded ``model`` with FSDP2."""
    return bool(getattr(model, _SHARDED, False))


def _dtype(name: Any) -> Optional[torch.dtype]:
    if name is None or isinstance(name, torch.dtype):
        return name
    value = getattr(torch, str(name), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype {name!r} for FSDP2 mixed precision; use e.g. 'bfloat16' or 'float32'.")
    return value


def apply_fsdp2(model: GPT, mesh: Any, strategy: Any = None) -> None:
    """Steps 1 and 3 of the module docstring: checkpoint and shard each ``Block``, then shard the root.

    Args:
        model: the model, built in full on each rank or on the meta device (``build_parallel``).
        mesh: the device mesh (``LightningModule.device_mesh``); its ``data_parallel`` dimension when it has one.
        strategy: the strategy whose ``activation_checkpointing``, ``param_dtype``, ``reduce_dtype`` and
            ``reshard_after_forward`` attributes are read (``FSDP2Strategy``); missing ones take FSDP2's defaults.

    Raises:
        ValueError: an unknown dtype name in ``param_dtype`` or ``reduce_dtype``.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if "data_parallel" in (mesh.mesh_dim_names or ()):
        mesh = mesh["data_parallel"]
    policy = MixedPrecisionPolicy(
        param_dtype=_dtype(getattr(strategy, "param_dtype", None)),
        reduce_dtype=_dtype(getattr(strategy, "reduce_dtype", None)),
    )
    activation_checkpointing = bool(getattr(strategy, "activation_checkpointing", False))
    reshard = bool(getattr(strategy, "reshard_after_forward", True))
    for module in model.modules():
        if isinstance(module, Block):
            if activation_checkpointing:
                checkpoint_activations(module)
            fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    setattr(model, _SHARDED, True)


def parallelize(model: GPT, mesh: Any = None, strategy: Any = None) -> None:
    """Lay ``model`` out for the strategy: FSDP2 (with activation checkpointing) when there is a device mesh and the
    model is not sharded yet; nothing otherwise (DDP wraps the model itself; compile happens at the first step).

    Args:
        model: the model.
        mesh: the device mesh, or ``None`` (no ``ModelParallelStrategy``).
        strategy: the trainer's strategy (its FSDP2 settings are read), or ``None``.
    """
    if mesh is not None and not is_sharded(model):
        apply_fsdp2(model, mesh, strategy)


def build_parallel(build: Callable[[], GPT], mesh: Any = None, strategy: Any = None, device: Any = "cpu") -> GPT:
    """Build the model laid out for the strategy: under FSDP2 (a device mesh), on the meta device, sharded, then
    materialized shard by shard with the values a one-process ``build()`` would draw; otherwise ``build()`` itself.

    Args:
        build: makes the model, e.g. ``lambda: GPT(config)``.
        mesh: the device mesh (``LightningModule.device_mesh``), or ``None``.
        strategy: the trainer's strategy (its FSDP2 settings are read), or ``None``.
        device: where the parameters live (the strategy's ``root_device``); its random generator draws the weights.

    Returns:
        The model; under FSDP2 its parameters are ``DTensor`` shards and it is marked sharded.
    """
    if mesh is None:
        return build()
    from lightning_gpt.training.meta_init import materialize_recorded, record_meta_build

    recorded = record_meta_build(build, torch.device(device))
    if recorded is None:
        log.warning(
            "The model cannot be built on the meta device (see lightning_gpt.training.meta_init); each rank "
            "builds it in full before sharding (more memory, same weights)."
        )
        model = build()
        parallelize(model, mesh, strategy)
        return model
    built, recording = recorded
    assert isinstance(built, GPT)
    apply_fsdp2(built, mesh, strategy)
    materialize_recorded(built, recording)
    return built


class CompiledForward:
    """Step 2 of the module docstring: ``torch.compile`` of a model's forward, made at first use and made again when
    the model object changes.

    Held outside the module tree (not a submodule), so the state dict keeps the plain ``GPT``'s names.

    Args:
        enabled: compile (``True``) or call the model as it is (``False``).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._model: Optional[nn.Module] = None
        self._compiled: Any = None

    def __call__(self, model: nn.Module) -> Any:
        """The callable the training, validation and test steps run ``model`` through."""
        if not self.enabled:
            return model
        if self._compiled is None or self._model is not model:
            self._model, self._compiled = model, torch.compile(model)
        return self._compiled
