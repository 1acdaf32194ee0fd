"""Deployment exports: the full-sequence forward (token ids -> logits) as a ``torch.export`` program or an ONNX model.

Both take any batch size and any sequence length from 1 to ``block_size`` (not only the example's), for every
attention kind (``standard``, ``flash``, ``linear``, ``sparse`` with each pattern). Plain torch; no Lightning.

```python
from lightning_gpt.io.deploy import export_program, write_deployment

program = export_program(model)                  # torch.export.ExportedProgram: program.module()(ids) -> logits
write_deployment(model, tokenizer, "deploy/onnx", format="onnx")          # model.onnx + deploy.json (+ tokenizer)
write_deployment(model, tokenizer, "deploy/pt2", format="torch_export")   # model.pt2 (torch.export.save) + ...
```

The graph has one input, ``input_ids`` ``(batch, seq)`` int64, and one output, ``logits`` ``(batch, seq,
padded_vocab_size)`` float32: no attention mask, no decoding cache (each call runs the whole sequence, as
``GPT.forward(idx)`` does). ``linear`` and ``sparse`` run their attention core at the static ``block_size`` inside the
graph (the rest of the model at ``seq``; see their ``forward``), so their exported cost does not shrink with ``seq``.

``write_deployment`` checks what it wrote before it is in place: the saved file, reloaded (``torch.export.load``,
or an onnxruntime session), must give the eager logits at two lengths other than the example's (1 and
``block_size``); an attention core that cannot be traced with a dynamic length (a user's own) is refused with one
paragraph, and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import Tensor, nn

from lightning_gpt.config import GPTConfig
from lightning_gpt.io.atomic import atomic_directory
from lightning_gpt.model import GPT

__all__ = [
    "DEPLOY_FILE",
    "DEPLOY_FORMATS",
    "MODEL_FILES",
    "check_deploy_extra",
    "compare_with_eager",
    "dynamic_shapes",
    "example_input",
    "export_onnx",
    "export_program",
    "write_deployment",
]

DEPLOY_FORMATS = ("onnx", "torch_export")
MODEL_FILES = {"onnx": "model.onnx", "torch_export": "model.pt2"}
DEPLOY_FILE = "deploy.json"
INPUT_NAME, OUTPUT_NAME = "input_ids", "logits"
EXTRA = "pip install 'lightning-gpt[deploy]'"


class _Logits(nn.Module):
    """``GPT.forward(input_ids)`` with nothing else: the one signature the exported graph has."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids)  # (B, T, padded_vocab_size)


def example_input(config: GPTConfig, batch_size: int = 2) -> Tensor:
    """The example ``input_ids`` traced: ``(batch_size, T)`` zeros with ``T = max(2, block_size // 2)`` (at most
    ``block_size``): neither 1 (which the tracer would pin) nor, where avoidable, a bound of the range."""
    length = min(config.block_size, max(2, config.block_size // 2))
    return torch.zeros(batch_size, length, dtype=torch.long)


def dynamic_shapes(config: GPTConfig) -> dict[str, dict[int, Any]]:
    """``torch.export`` dynamic shapes of ``input_ids``: batch ``>= 1``, sequence ``1 .. block_size``."""
    from torch.export import Dim

    shapes: dict[int, Any] = {0: Dim("batch", min=1)}
    if config.block_size > 1:
        shapes[1] = Dim("seq", min=1, max=config.block_size)
    return {INPUT_NAME: shapes}


def _inference_copy(model: GPT) -> GPT:
    """``model`` itself when it is in eval mode and float32, else an eval-mode float32 copy (the caller's model keeps
    its mode and dtype)."""
    if not model.training and all(p.dtype == torch.float32 for p in model.parameters()):
        return model
    return copy.deepcopy(model).float().eval()


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Keep the exporters' progress and "torchvision is not installed" lines, and torch's own deprecation notices
    (``FutureWarning`` from its pytree pickling), off the console."""
    names = ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_program(model: GPT) -> torch.export.ExportedProgram:
    """``torch.export`` of the model's full-sequence forward, with dynamic batch and sequence length.

    Args:
        model: the model (exported in eval mode and float32; a model in another mode or dtype is copied first), on
            the device the program is for.

    Returns:
        The program: ``program.module()(input_ids)`` with ``input_ids`` ``(B, T)`` int64, ``1 <= T <= block_size``,
        gives the logits ``(B, T, padded_vocab_size)``; ``torch.export.save(program, "model.pt2")`` writes it.

    Raises:
        ValueError: the model's attention core cannot be traced with a dynamic sequence length (the message names
            the kind and the tracer's reason).
    """
    model = _inference_copy(model)
    config = model.config
    example = example_input(config).to(model.lm_head.weight.device)
    try:
        with torch.no_grad(), _quiet_exporters():
            return torch.export.export(_Logits(model), (example,), dynamic_shapes=dynamic_shapes(config), strict=False)
    except Exception as err:
        raise ValueError(_trace_refusal(config, err)) from err


def _trace_refusal(config: GPTConfig, err: BaseException) -> str:
    reason = " ".join(str(err).split("\n")[:3]).strip() or type(err).__name__
    return (
        f"torch.export could not trace attention {config.attention!r} with a dynamic sequence length "
        f"({type(err).__name__}: {reason[:600]}). The built-in kinds (standard, flash, linear, sparse) export; a "
        "core of your own must not branch on the sequence length or call Python's min()/max() on it (see how "
        "lightning_gpt/attention/linear.py pads a traced length to block_size)."
    )


def check_deploy_extra(format: str, verify: bool = True) -> None:
    """Refuse early, with the pip command, when a package a deployment format needs is not installed.

    Args:
        format: ``onnx`` or ``torch_export`` (the latter needs nothing beyond torch).
        verify: also need ``onnxruntime``, which checks the ONNX model.

    Raises:
        ValueError: an unknown format.
        ImportError: ``onnx``/``onnxscript`` (or ``onnxruntime``) missing: one paragraph naming them and the pip
            command.
    """
    if format not in DEPLOY_FORMATS:
        raise ValueError(f"format must be one of {DEPLOY_FORMATS}, got {format!r}.")
    if format != "onnx":
        return
    needed = ("onnx", "onnxscript", "onnxruntime") if verify else ("onnx", "onnxscript")
    missing = [name for name in needed if _missing(name)]
    if missing:
        raise ImportError(
            f"The ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed "
            f"(onnx and onnxscript write the model, onnxruntime checks it). Install the deploy extra: {EXTRA}."
        )


def _missing(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return True
    return False


def export_onnx(model: GPT, program: Optional[torch.export.ExportedProgram] = None) -> Any:
    """The model (or its ``export_program``) as ONNX, with the dynamic batch and sequence length.

    Uses ``torch.onnx.export(..., dynamo=True)`` (needs ``onnx`` and ``onnxscript``: the deploy extra).

    Args:
        model: the model.
        program: its ``export_program(model)`` when already made (traced again otherwise).

    Returns:
        A ``torch.onnx.ONNXProgram``: ``.save(path)`` writes it; ``.model_proto`` is the ``onnx.ModelProto``, with the
        input ``input_ids`` ``(batch, seq)`` int64 and the output ``logits`` ``(batch, seq, padded_vocab_size)``.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` missing (one paragraph with the pip command).
        ValueError: the attention core cannot be traced with a dynamic length, or ONNX cannot express the program.
    """
    check_deploy_extra("onnx", verify=False)
    program = export_program(model) if program is None else program
    try:
        with torch.no_grad(), _quiet_exporters():
            return torch.onnx.export(
                program, (), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False
            )
    except Exception as err:
        reason = " ".join(str(err).split("\n")[:3]).strip()
        raise ValueError(
            f"The ONNX exporter could not convert attention {model.config.attention!r} ({type(err).__name__}: "
            f"{reason[:600]}). Export it as a torch.export program instead (format torch_export)."
        ) from err


def _check_lengths(config: GPTConfig) -> list[tuple[int, int]]:
    """``(batch, seq)`` shapes checked after writing: lengths other than the example's (1 and ``block_size``)."""
    example = example_input(config).size(1)
    lengths = [t for t in dict.fromkeys((1, config.block_size)) if t != example] or [config.block_size]
    return [(1 if t > 1 else 3, t) for t in lengths]


def compare_with_eager(run: Callable[[Tensor], Tensor], model: GPT, what: str = "export") -> None:
    """Check an exported forward against the model at lengths other than the traced example's.

    ``run(ids)`` and ``model(ids)`` are compared at batch x length 3 x 1 and 1 x ``block_size`` (random ids, seed 0):
    an export fixed to the example's length fails or gives other shapes there.

    Args:
        run: the exported forward, ``(B, T)`` int64 ids -> ``(B, T, padded_vocab_size)`` logits (a tensor).
        model: the eager model (eval mode).
        what: what ``run`` is, for the message (e.g. ``"ONNX model (in onnxruntime)"``).

    Raises:
        ValueError: ``run`` fails at one of the lengths, or its logits differ from the model's by more than
            ``1e-4 * max(1, max |logits|)``.
    """
    generator = torch.Generator().manual_seed(0)
    device = model.lm_head.weight.device
    for batch, length in _check_lengths(model.config):
        ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator).to(device)
        with torch.no_grad():
            expected = model(ids).cpu()  # (B, T, V)
        try:
            got = run(ids).cpu()
        except Exception as err:
            raise ValueError(
                f"The {what} of attention {model.config.attention!r} fails at sequence length {length} "
                f"({type(err).__name__}: {str(err).splitlines()[0][:400] if str(err) else ''}): it was fixed to the "
                "example's shape (batch x length), so it cannot serve others."
            ) from err
        error = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
        tolerance = 1e-4 * max(1.0, expected.abs().max().item())
        if not error <= tolerance:
            raise ValueError(
                f"The {what} of attention {model.config.attention!r} gives logits {error:.3g} away from the model's "
                f"at sequence length {length} (tolerance {tolerance:.3g}; shapes {tuple(got.shape)} vs "
                f"{tuple(expected.shape)})."
            )


def _onnx_runner(path: Path) -> Callable[[Tensor], Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(ids: Tensor) -> Tensor:
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: ids.cpu().numpy()})
        return torch.from_numpy(logits)

    return run


def _program_runner(path: Path) -> Callable[[Tensor], Tensor]:
    with _quiet_exporters():
        module = torch.export.load(str(path)).module()

    def run(ids: Tensor) -> Tensor:
        with torch.no_grad():
            return module(ids)

    return run


def _side_files(model: GPT, tokenizer: Optional[Any], format: str) -> dict[str, Any]:
    """``deploy.json`` (what the graph takes and gives, the config, the tokenizer state) and, where the tokenizer
    can be written as one, Hugging Face's ``tokenizer.json`` (for a deployment without lightning-gpt)."""
    from lightning_gpt.io.hf import _tokenizer_files

    config = model.config
    files: dict[str, Any] = {}
    if tokenizer is not None:
        with contextlib.suppress(ValueError):  # a tokenizer HF's format cannot hold: deploy.json still has it
            files.update(_tokenizer_files(tokenizer, config.block_size))
    files[DEPLOY_FILE] = {
        "format": format,
        "file": MODEL_FILES[format],
        "inputs": {INPUT_NAME: {"shape": ["batch", "seq"], "dtype": "int64", "seq": [1, config.block_size]}},
        "outputs": {OUTPUT_NAME: {"shape": ["batch", "seq", config.padded_vocab_size], "dtype": "float32"}},
        "vocab_size": config.vocab_size,
        "torch_version": torch.__version__,
        "gpt_config": config.to_dict(),
        "tokenizer": tokenizer.state_dict() if tokenizer is not None else None,
    }
    return files


def write_deployment(
    model: GPT,
    tokenizer: Optional[Any],
    output_dir: Union[str, Path],
    format: str = "onnx",
    verify: bool = True,
) -> Path:
    """Write ``model`` as a deployment folder: ``model.onnx`` or ``model.pt2``, ``deploy.json`` and the tokenizer.

    ``model.pt2`` is ``torch.export.save`` of ``export_program(model)`` (load with ``torch.export.load``);
    ``model.onnx`` is ``export_onnx(model)`` (weights over 2 GB go to ``model.onnx.data`` beside it). The folder
    appears whole or not at all (``atomic_directory``: a failure, Ctrl-C or SIGTERM leaves nothing).

    Args:
        model: the model (exported in eval mode, float32).
        tokenizer: its tokenizer (kept in ``deploy.json``; also as ``tokenizer.json`` where HF's format holds it), or
            ``None``.
        output_dir: the folder to create; it must not exist, or be empty.
        format: ``onnx`` or ``torch_export``.
        verify: reload the written file and compare its logits with the model's at sequence lengths 1 and
            ``block_size`` (ONNX: in onnxruntime) before the folder is put in place.

    Returns:
        The folder.

    Raises:
        ValueError: an unknown format, a non-empty ``output_dir``, an attention core that cannot be exported with a
            dynamic length, or an export whose logits differ from the model's (nothing is written).
        ImportError: ONNX without ``onnx``/``onnxscript`` (or ``onnxruntime`` when ``verify``): the pip command.
        StorageError: a full or read-only disk (the temporary folder is removed).
        Terminated: SIGTERM arrived during the write (the temporary folder is removed; exit status 143).
    """
    check_deploy_extra(format, verify=verify)
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--output_dir {str(out)!r} already exists and is not empty; choose a new folder.")
    model = _inference_copy(model)
    program = export_program(model)
    onnx_program = export_onnx(model, program) if format == "onnx" else None
    files = _side_files(model, tokenizer, format)
    with atomic_directory(out, "the export", "--output_dir") as tmp:
        target = tmp / MODEL_FILES[format]
        if onnx_program is not None:
            with _quiet_exporters():
                onnx_program.save(str(target))
        else:
            # Through memory, then one plain write: torch's zip writer straight onto a full disk raises "unexpected
            # pos" and its destructor then aborts the process (std::terminate) when it retries at exit.
            buffer = io.BytesIO()
            with _quiet_exporters():
                torch.export.save(program, buffer)
            with open(target, "wb") as f:
                f.write(buffer.getbuffer())
            del buffer
        for name, content in files.items():
            text = content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False) + "\n"
            (tmp / name).write_text(text, encoding="utf-8")
        if verify:
            runner = _onnx_runner(target) if format == "onnx" else _program_runner(target)
            what = "ONNX model (in onnxruntime)" if format == "onnx" else "exported program"
            try:
                compare_with_eager(runner, model, what)
            except ValueError as err:
                raise ValueError(f"{err} Nothing was written to {str(out)!r}.") from err
    return out
