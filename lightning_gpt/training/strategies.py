"""Named, configurable distributed presets that a recipe selects with ``trainer.strategy``.

```yaml
trainer:
  strategy:
    class_path: lightning_gpt.training.strategies.FSDP2Strategy
    init_args: {activation_checkpointing: true, param_dtype: bfloat16, reduce_dtype: float32}
```

- ``DDPStrategy`` (or the plain string ``ddp``): data parallel, gradients all-reduced; ``timeout_minutes`` bounds how
  long the surviving ranks wait on a collective when another rank died, so a crashed job exits with an error instead
  of hanging. gloo on CPU, nccl on CUDA.
- ``FSDP2Strategy``: Lightning's ``ModelParallelStrategy`` set up for pure FSDP2 (``fully_shard``): every
  ``Block`` and then the root are sharded in ``GPTModule.configure_model``, which reads ``activation_checkpointing``,
  ``param_dtype`` and ``reduce_dtype`` from this object. The model is built on the meta device and each rank allocates
  only its shards (``lightning_gpt.training.parallelize``). Checkpoints are sharded folders by default (every rank
  writes its own shards; ``lightning_gpt.io.checkpoint.load_checkpoint``, ``export``, ``generate`` and ``evaluate``
  read them, and ``fit --ckpt_path`` resumes from them under ``FSDP2Strategy`` on any number of processes, under
  ``DDPStrategy`` or in one process); ``save_distributed_checkpoint: false`` writes one consolidated ``.ckpt``
  instead (gathered on rank 0).
- ``FSDP1Strategy``: Lightning's ``FSDPStrategy`` (CUDA only) wrapping each ``Block``, with optional activation
  checkpointing of each ``Block``.

Multi-node runs use Lightning's usual launchers: set ``trainer.num_nodes`` and ``trainer.devices`` and start the same
command on every node with ``torchrun`` (``--nnodes --nproc_per_node --rdzv_endpoint``) or under SLURM with ``srun``
(Lightning detects the SLURM environment; one task per device).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal, Optional

import torch
from lightning.pytorch.strategies import DDPStrategy as _LightningDDP
from lightning.pytorch.strategies import FSDPStrategy as _LightningFSDP
from lightning.pytorch.strategies import ModelParallelStrategy

from lightning_gpt.training._lightning_internals import (
    load_raw_module_state,
    model_parallel_sizes,
    saves_distributed_checkpoint,
    set_data_parallel_size,
    unwrap_optimizer,
)

__all__ = ["DDPStrategy", "FSDP1Strategy", "FSDP2Strategy", "fix_mmap_threshold", "resolve_dtype"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(name: Optional[str], field: str = "dtype") -> Optional[torch.dtype]:
    """Turn a dtype name from a YAML (``bfloat16``, ``bf16``, ``float16``, ``float32``...) into a ``torch.dtype``.

    Args:
        name: the name, or ``None`` (keep the parameters' own dtype).
        field: the option name used in the error message.
    """
    if name is None:
        return None
    key = str(name).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"{field}={name!r} is not a known dtype. Use one of {sorted(_DTYPES)} or null.")
    return _DTYPES[key]


def _timeout(minutes: float, field: str = "timeout_minutes") -> timedelta:
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0:
        raise ValueError(f"{field} must be a positive number of minutes, got {minutes!r}.")
    return timedelta(minutes=float(minutes))


class DDPStrategy(_LightningDDP):
    """Distributed data parallel with a bounded wait for dead ranks.

    Args:
        timeout_minutes: how long a collective may wait for the other ranks before the process group raises. If a
            rank dies, the others exit with an error after at most this long instead of hanging.
        process_group_backend: ``gloo``, ``nccl`` or ``None`` (gloo on CPU, nccl on CUDA).
        find_unused_parameters: forwarded to ``torch.nn.parallel.DistributedDataParallel``.
        gradient_as_bucket_view: forwarded to ``DistributedDataParallel`` (saves memory).
        static_graph: forwarded to ``DistributedDataParallel``.
        start_method: how Lightning starts the other local ranks (``popen`` re-runs the command line).
    """

    def __init__(
        self,
        timeout_minutes: float = 30.0,
        process_group_backend: Optional[str] = None,
        find_unused_parameters: bool = False,
        gradient_as_bucket_view: bool = True,
        static_graph: bool = False,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
    ) -> None:
        self.timeout_minutes = timeout_minutes
        super().__init__(
            process_group_backend=process_group_backend,
            timeout=_timeout(timeout_minutes),
            start_method=start_method,
            find_unused_parameters=find_unused_parameters,
            gradient_as_bucket_view=gradient_as_bucket_view,
            static_graph=static_graph,
        )


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel with ``torch.distributed.fsdp.fully_shard`` (FSDP2), one shard group per block.

    ``GPTModule.configure_model`` applies ``fully_shard`` to each ``Block`` and then to the whole model using the
    options below (read as attributes of this strategy).

    Args:
        activation_checkpointing: recompute each block's activations in the backward pass (less memory, ~30% more
            compute).
        param_dtype: dtype of parameters during forward/backward (e.g. ``bfloat16``); ``None`` keeps the stored dtype.
        reduce_dtype: dtype of the gradient reduce-scatter (e.g. ``float32``); ``None`` uses ``param_dtype``.
        reshard_after_forward: free the gathered parameters after each block's forward (ZeRO-3); ``False`` keeps them
            until backward (ZeRO-2-like, more memory, less communication).
        data_parallel_size: number of shards; ``auto`` uses every process (pure FSDP).
        tensor_parallel_size: kept at 1 for pure FSDP (tensor parallelism is not implemented by ``GPT``).
        save_distributed_checkpoint: ``True`` (default): each checkpoint is a sharded folder (``last.ckpt/``:
            ``torch.distributed.checkpoint`` shards, written by every rank in parallel, and ``meta.pt``; no rank
            gathers the model or the optimizer state), written beside the old one and renamed into place. ``export``,
            ``generate``, ``evaluate``, ``serve`` and ``load_checkpoint`` read it directly (consolidating as they
            load); ``fit --ckpt_path`` resumes from it under ``FSDP2Strategy``, and under DDP or in one process
            (weights and AdamW state consolidated as they load: ``lightning_gpt.io.sharded``). ``False``: one
            consolidated ``.ckpt`` file gathered on rank 0 (memory for the whole model and optimizer state there).
        timeout_minutes: bound on how long a collective waits for a dead rank (see ``DDPStrategy``).
        process_group_backend: ``gloo``, ``nccl`` or ``None`` for the device's default.
        cpu_mmap_threshold: on CPU (Linux, glibc), fix malloc's mmap threshold at this many bytes when the process
            group starts, so that the blocks' gathered parameters and gradients, freed at every step, go back to the
            system instead of growing a fragmented heap (``benchmarks/fsdp_memory.py``: peak RSS per rank 3.6 GB with
            glibc's dynamic threshold vs 2.1 GB fixed, GPT-2 124M). ``None`` leaves malloc alone; ignored on GPUs.
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        param_dtype: Optional[str] = None,
        reduce_dtype: Optional[str] = None,
        reshard_after_forward: bool = True,
        data_parallel_size: int | Literal["auto"] = "auto",
        tensor_parallel_size: int = 1,
        save_distributed_checkpoint: bool = True,
        timeout_minutes: float = 30.0,
        process_group_backend: Optional[str] = None,
        cpu_mmap_threshold: Optional[int] = 131072,
    ) -> None:
        if cpu_mmap_threshold is not None and (
            isinstance(cpu_mmap_threshold, bool) or not isinstance(cpu_mmap_threshold, int) or cpu_mmap_threshold <= 0
        ):
            raise ValueError(
                f"FSDP2Strategy(cpu_mmap_threshold={cpu_mmap_threshold!r}): give a positive number of bytes (e.g. "
                "131072) or null to leave malloc's default."
            )
        self.cpu_mmap_threshold = cpu_mmap_threshold
        if tensor_parallel_size != 1:
            raise ValueError(
                f"FSDP2Strategy(tensor_parallel_size={tensor_parallel_size}): GPT has no tensor-parallel plan; use "
                "tensor_parallel_size=1 (pure FSDP)."
            )
        # Fail at construction (in the CLI parser), not in the middle of configure_model.
        self.param_dtype = resolve_dtype(param_dtype, "FSDP2Strategy.param_dtype")
        self.reduce_dtype = resolve_dtype(reduce_dtype, "FSDP2Strategy.reduce_dtype")
        self.activation_checkpointing = bool(activation_checkpointing)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.timeout_minutes = timeout_minutes
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=_timeout(timeout_minutes),
        )

    def _setup_distributed(self) -> None:
        super()._setup_distributed()
        # Lightning's "auto" means one data-parallel group per node; pure FSDP shards over every process.
        data_parallel, tensor_parallel = model_parallel_sizes(self)
        if data_parallel == "auto":
            set_data_parallel_size(self, self.world_size // tensor_parallel)
        if self.root_device.type == "cpu" and self.cpu_mmap_threshold is not None:
            fix_mmap_threshold(self.cpu_mmap_threshold)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Optional[Any] = None) -> None:
        """Save a sharded folder into ``<path>.tmp-<pid>`` and rename it onto ``path`` once every rank has written
        (a save killed midway leaves the previous checkpoint whole, and the temporary is not a ``*.ckpt``; the next
        save of ``path`` removes it); a consolidated file as Lightning does."""
        if not saves_distributed_checkpoint(self):
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        import os
        import shutil
        from pathlib import Path

        path = Path(self.broadcast(str(filepath)))
        temporary = Path(self.broadcast(f"{path}.tmp-{os.getpid()}"))
        if self.global_rank == 0:  # temporaries of saves that never finished (a run folder holds one run: not live)
            for stale in path.parent.glob(f"{path.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        self.barrier()
        super().save_checkpoint(checkpoint, temporary, storage_options)
        self.barrier()  # every rank's shards are on disk (meta.pt and .metadata too)
        if self.global_rank == 0:
            old = Path(f"{path}.old-{os.getpid()}")
            if path.is_dir():
                path.rename(old)
            elif path.exists():
                path.unlink()
            temporary.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """The consolidated optimizer state keyed like a plain optimizer's (ids in ``param_groups`` order).

        Lightning numbers the parameters in ``model.parameters()`` order, which differs from the order of
        ``GPTModule``'s two parameter groups: a DDP run or a single process would then give each parameter another
        one's Adam moments. Keyed this way, the checkpoint resumes correctly under any strategy.
        """
        if saves_distributed_checkpoint(self):
            return super().optimizer_state(optimizer)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optimizer = unwrap_optimizer(optimizer)  # a LightningOptimizer
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state: dict[str, Any] = dict(get_optimizer_state_dict(self._sharded_model(), optimizer, options=options))
        if not state or not state.get("param_groups"):
            return state
        order = [name for group in state["param_groups"] for name in group["params"]]
        index = {name: i for i, name in enumerate(order)}
        return {
            "state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
        }

    def load_checkpoint(self, checkpoint_path: Any, weights_only: Optional[bool] = None) -> dict[str, Any]:
        """Load a consolidated ``.ckpt`` (from any strategy) into the sharded model and optimizer; numbered optimizer
        states are matched to parameters in ``param_groups`` order (see ``optimizer_state``)."""
        from pathlib import Path

        path = Path(self.broadcast(checkpoint_path))
        # Weights-only unless the user trusts the file (--trust_checkpoint), whatever Lightning passes.
        trust = bool(getattr(self.checkpoint_io, "trust_checkpoint", False))
        if not path.is_file():  # a sharded checkpoint directory: Lightning's loader
            # torch.distributed.checkpoint loads only the entries the live optimizer already has: without this, the
            # saved ``initial_lr`` (LRSchedule's peak rate) is skipped and the schedule restarts from the saved ``lr``.
            for optimizer in self.optimizers:
                for group in optimizer.param_groups:
                    group.setdefault("initial_lr", group["lr"])
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only if trust else True)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        module = self.lightning_module
        strict = module.strict_loading if module is not None else True
        from lightning_gpt.io.checkpoint import torch_load

        model = self._sharded_model()
        checkpoint = torch_load(path, map_location="cpu", trust_checkpoint=trust, mmap=True)
        load_raw_module_state(checkpoint.pop("state_dict"), model, strict=strict)
        options = StateDictOptions(broadcast_from_rank0=True, full_state_dict=True, strict=strict)
        names = {param: name for name, param in model.named_parameters()}
        for optimizer, state in zip(self.optimizers, checkpoint.get("optimizer_states", [])):
            order = [names[p] for group in optimizer.param_groups for p in group["params"]]
            groups = state.get("param_groups") or [{"params": []}]
            if any(isinstance(i, int) for g in groups for i in g["params"]):
                state = {
                    "state": {order[i]: value for i, value in state["state"].items()},
                    "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
                }
            set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=options)
        return checkpoint

    def _sharded_model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("FSDP2Strategy has no model yet: load or save a checkpoint after the Trainer set it up.")
        return self.model

    def mixed_precision_policy(self):  # -> Optional[MixedPrecisionPolicy]
        """The ``MixedPrecisionPolicy`` for ``fully_shard``, or ``None`` when no dtype is set."""
        if self.param_dtype is None and self.reduce_dtype is None:
            return None
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype)


def fix_mmap_threshold(threshold: int) -> bool:
    """Fix glibc malloc's mmap threshold (``mallopt(M_MMAP_THRESHOLD, threshold)``): allocations of at least
    ``threshold`` bytes are mapped and unmapped on free, and glibc stops raising the threshold dynamically.

    Returns:
        Whether it was set (``False`` off Linux or without glibc).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD (malloc.h)


class FSDP1Strategy(_LightningFSDP):
    """Lightning's ``FSDPStrategy`` (FSDP1, CUDA only) wrapping each transformer ``Block``.

    Args:
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3), ``SHARD_GRAD_OP`` (ZeRO-2), ``NO_SHARD`` or ``HYBRID_SHARD``
            (shard within a node, replicate across nodes).
        activation_checkpointing: recompute each block's activations in the backward pass.
        state_dict_type: ``full`` (one consolidated checkpoint file) or ``sharded`` (a directory per checkpoint).
        cpu_offload: keep parameters and gradients on the CPU between uses.
        timeout_minutes: bound on how long a collective waits for a dead rank.
        process_group_backend: ``nccl`` (default on CUDA) or another backend.
    """

    def __init__(
        self,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        activation_checkpointing: bool = False,
        state_dict_type: Literal["full", "sharded"] = "full",
        cpu_offload: bool = False,
        timeout_minutes: float = 30.0,
        process_group_backend: Optional[str] = None,
    ) -> None:
        from lightning_gpt.model import Block

        self.timeout_minutes = timeout_minutes
        super().__init__(
            auto_wrap_policy={Block},
            activation_checkpointing_policy={Block} if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
            timeout=_timeout(timeout_minutes),
            process_group_backend=process_group_backend,
        )
