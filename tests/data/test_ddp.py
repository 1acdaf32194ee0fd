"""A real two-process DDP run (``ddp_spawn`` on CPU): the ranks train on disjoint windows.

Slow (two spawned processes import torch and Lightning: ~65 s on the shared 2-core dev machine, far less on an idle
one); the simulated-rank tests in ``test_batching.py`` cover the same sharding quickly.
"""

import atexit
import os

import pytest
import torch

# pytest's default (prepend) import mode puts this directory on sys.path, also for the spawned ranks.
from tests.data.test_datamodule import Recorder, corpus, make_dm, trainer


class RankRecorder(Recorder):
    """Saves the windows each DDP rank trained on (spawned processes cannot return them)."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir

    def on_train_end(self) -> None:
        torch.save(torch.cat(self.seen), os.path.join(self.out_dir, f"rank{self.global_rank}.pt"))
        # Lightning's spawned ranks exit with the gloo process group still alive; its threads, torn down during
        # interpreter finalization, now and then abort the process ("terminate called without an active exception")
        # after training succeeded. Destroy it before finalization (nothing collective runs after fit in the worker).
        atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_real_ddp_ranks_train_on_disjoint_windows(tmp_path):
    torch.manual_seed(0)
    dm = make_dm(tmp_path, source=corpus(tmp_path, 33 * 8, "ddp.txt"), batch_size=2)
    dm.prepare_data()  # the cache exists before the workers start
    ddp = trainer(tmp_path, 4, strategy="ddp_spawn", devices=2)
    ddp.fit(RankRecorder(str(tmp_path)), datamodule=dm)
    seen = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert seen[0].shape == seen[1].shape == (8, 8)
    rows = {tuple(x.tolist()) for s in seen for x in s}
    assert len(rows) == 16  # 2 ranks x 4 steps x 2 rows, no window seen twice
