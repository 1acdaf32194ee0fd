"""``LossCurve``: a PNG of the train and validation loss in the run folder at the end of ``fit`` (also when it stops
early: Ctrl-C, SIGTERM, an error).

The curve can be looked at without starting TensorBoard. The points are collected as training runs (the train loss on
logging steps, the validation loss after each validation) and travel in the checkpoint, so a resumed run draws the
whole curve. matplotlib is optional (``pip install "lightning-gpt[plot]"``); without it no image is written and one
line says so.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_gpt.training._lightning_internals import should_update_logs

__all__ = ["LossCurve", "plot_loss_curve"]


def _scalar(value: Any) -> Optional[float]:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out and abs(out) != float("inf") else None


class LossCurve(Callback):
    """Collect ``train/loss`` and ``val/loss`` during ``fit``; write ``<default_root_dir>/<filename>`` at its end, or
    when it stops with an exception (Ctrl-C, SIGTERM, an error).

    Args:
        filename: the image's file name inside ``trainer.default_root_dir`` (``""`` turns the image off).
    """

    def __init__(self, filename: str = "loss.png") -> None:
        self.filename = filename
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if not trainer.is_global_zero or not should_update_logs(trainer):
            return
        loss = _scalar(trainer.callback_metrics.get("train/loss"))
        if loss is not None and (not self.train or self.train[-1][0] < trainer.global_step):
            self.train.append((int(trainer.global_step), loss))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        loss = _scalar(trainer.callback_metrics.get("val/loss"))
        if loss is not None:
            self.val = [p for p in self.val if p[0] != trainer.global_step] + [(int(trainer.global_step), loss)]

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.draw(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A fit stopped early (Ctrl-C, SIGTERM, a non-finite loss, any error): the curve so far is still drawn."""
        if trainer.state.fn == "fit":
            try:
                self.draw(trainer)
            except Exception as err:  # noqa: BLE001 - never hide the exception that stopped the run
                rank_zero_info(f"Loss curve not drawn ({type(err).__name__}: {err}).")

    def draw(self, trainer: Trainer) -> None:
        """Write the image of the points collected so far (rank zero; nothing when there are none or no filename)."""
        if not self.filename or not trainer.is_global_zero or not (self.train or self.val):
            return
        path = os.path.join(str(trainer.default_root_dir), self.filename)
        try:
            drawn = plot_loss_curve(self.train, self.val, path)
        except (OSError, ValueError, RuntimeError) as err:  # the run itself is done and saved: never fail it here
            from lightning_gpt.errors import storage_error

            full = storage_error(err, path, "the loss curve", "--trainer.default_root_dir")  # a full disk: say so
            rank_zero_info(
                f"Loss curve not drawn: {full}" if full else f"Loss curve not drawn ({type(err).__name__}: {err})."
            )
            return
        if drawn:
            rank_zero_info(f"Loss curve: {path}")
        else:
            rank_zero_info("Loss curve not drawn: matplotlib is not installed (pip install matplotlib).")

    def state_dict(self) -> dict[str, Any]:
        return {"train": [list(p) for p in self.train], "val": [list(p) for p in self.val]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [(int(s), float(v)) for s, v in state_dict.get("train", [])]
        self.val = [(int(s), float(v)) for s, v in state_dict.get("val", [])]


def plot_loss_curve(train: list[tuple[int, float]], val: list[tuple[int, float]], path: str) -> bool:
    """Draw the loss against the optimizer step into ``path`` (PNG, written atomically).

    Args:
        train: ``(step, loss)`` points of the training loss.
        val: ``(step, loss)`` points of the validation loss.
        path: the image file.

    Returns:
        ``False`` when matplotlib is not installed (nothing written), else ``True``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), label="val", marker="o", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True
