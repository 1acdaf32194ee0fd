"""Packing, padding, the token cache, the sampler (sharding, seeding, resume offsets) and worker processes."""

import json
import os
import random

import numpy as np
import pytest
import torch

from lightning_gpt.data.cache import build_token_cache, load_token_cache
from lightning_gpt.data.datasets import IGNORE_INDEX, PackedDataset, PaddedDataset
from lightning_gpt.data.sampler import ResumableSampler
from lightning_gpt.data.tokenizers import build_tokenizer
from lightning_gpt.training.datamodule import TextDataModule


def make_dm(tmp_path, docs, **kw):
    (tmp_path / "corpus").mkdir(exist_ok=True)
    path = tmp_path / "corpus" / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    kw.setdefault("cache_dir", str(tmp_path / "cache"))
    return TextDataModule(source=str(path), **kw)


def test_pack_mode_windows_shift_and_eos(tmp_path):
    docs = ["abcdef", "ghij", "klmnopq"]
    dm = make_dm(tmp_path, docs, block_size=4, batch_size=2, val_fraction=0.0, shift_windows=False)
    dm.setup("fit")
    tok = dm.tokenizer
    stream = []
    for d in docs:
        stream += tok.encode(d, eos=True)
    ds = dm.train_dataset
    assert isinstance(ds, PackedDataset) and len(ds) == (len(stream) - 1) // 4
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (4,)
        assert x.tolist() == stream[i * 4 : i * 4 + 4] and y.tolist() == stream[i * 4 + 1 : i * 4 + 5]
    assert tok.decode(ds[1][0], skip_special=False) == "ef<|eos|>g"


def test_pack_mode_with_bos(tmp_path):
    dm = make_dm(tmp_path, ["ab", "cd"], block_size=3, val_fraction=0.0, add_bos=True, shift_windows=False)
    dm.setup("fit")
    tok = dm.tokenizer
    x, y = dm.train_dataset[0]
    assert x.tolist() == [tok.bos_id, *tok.encode("ab")] and y.tolist() == [*tok.encode("ab"), tok.eos_id]


def test_pad_mode_rows_truncation_and_ignored_targets(tmp_path):
    docs = ["ab", "abcdefghij"]
    dm = make_dm(tmp_path, docs, block_size=6, mode="pad", val_fraction=0.0)
    dm.setup("fit")
    tok = dm.tokenizer
    ds = dm.train_dataset
    assert isinstance(ds, PaddedDataset) and len(ds) == 2
    x, y = ds[0]  # "ab" EOS -> inputs a b, targets b EOS
    assert x.tolist() == tok.encode("ab") + [tok.pad_id] * 4
    assert y.tolist() == tok.encode("b") + [tok.eos_id] + [IGNORE_INDEX] * 4
    x, y = ds[1]  # truncated to block_size + 1 tokens
    assert x.tolist() == tok.encode("abcdef") and y.tolist() == tok.encode("bcdefg")
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == yb.shape == (2, 6)


def test_val_split_is_the_tail_and_disjoint(tmp_path):
    dm = make_dm(tmp_path, ["x" * 50 + "y" * 50], block_size=8, val_fraction=0.25, shift_windows=False)
    dm.setup("fit")
    n_train, n_val = len(dm.train_dataset), len(dm.val_dataset)
    assert n_train + n_val == 100 // 8 and n_val == round(12 * 0.25)
    assert dm.val_dataset.first_window == n_train
    x, _ = dm.val_dataset[n_val - 1]
    assert set(dm.tokenizer.decode(x)) == {"y"}


def test_explicit_val_source(tmp_path):
    val = tmp_path / "val.txt"
    val.write_text("zzzzzzzzzzzzzzzzzzzz")
    dm = make_dm(tmp_path, ["a" * 40], block_size=4, val_source=str(val))
    dm.setup("fit")
    assert len(dm.train_dataset) == (41 - 1) // 4 - 1 and len(dm.val_dataset) == (21 - 1) // 4  # -1: shifting
    # The tokenizer is trained on the train source only: the unseen 'z' maps to UNK.
    assert dm.val_dataset[0][0].tolist() == [dm.tokenizer.unk_id] * 4


def test_shifted_windows_move_per_epoch_and_stay_out_of_val(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(400))  # every token distinct: positions are recoverable
    dm = make_dm(tmp_path, [text], block_size=8, batch_size=4, val_fraction=0.2, seed=3)
    dm.setup("fit")
    train, val = dm.train_dataset, dm.val_dataset
    total = 400 // 8
    assert len(val) == 10 and len(train) == total - 10 - 1  # one window given up for the shift
    val_start = val.first_window * 8
    shifts = set()
    for epoch in range(4):
        s = train.shift(epoch)
        shifts.add(s)
        assert 0 <= s < 8
        for i in range(len(train)):
            x, y = train[epoch * len(train) + i]
            first = int(x[0]) - dm.tokenizer.encode(text[0])[0]
            assert first == s + i * 8 and torch.equal(x[1:], y[:-1])
            assert first + 8 <= val_start  # the last target stays before the validation tokens
    assert len(shifts) > 1 and train.shift(1) == dm.train_dataset.shift(1)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    starts = sorted(int(x[0]) - dm.tokenizer.encode(text[0])[0] for xb, _ in loader for x in xb)
    assert starts == [train.shift(2) + 8 * i for i in range(len(train))]


def test_token_cache_reused_atomic_and_dtype(tmp_path):
    tok = build_tokenizer("char", ["hello world"])
    calls = []

    def docs():
        calls.append(1)
        yield "hello"
        yield "world"

    key = {"k": 1}
    p1 = build_token_cache(str(tmp_path), key, docs(), tok)
    p2 = build_token_cache(str(tmp_path), key, docs(), tok)
    assert p1 == p2 and len(calls) == 1  # second call never read the documents
    cache = load_token_cache(p1)
    assert cache.tokens.dtype == np.uint16 and cache.n_docs == 2
    assert cache.tokens.tolist() == tok.encode("hello", eos=True) + tok.encode("world", eos=True)
    assert cache.offsets.tolist() == [0, 6, 12]
    assert [f for f in os.listdir(tmp_path / "tokens") if f.startswith(".tmp")] == []
    with pytest.raises(ValueError, match="no text"):
        build_token_cache(str(tmp_path), {"k": 2}, iter([]), tok, description="empty")
    assert sorted(os.listdir(tmp_path / "tokens")) == [os.path.basename(p1)]  # nothing half-written


def test_sampler_shards_are_disjoint_and_cover():
    n = 103
    shards = [ResumableSampler(n, num_replicas=2, rank=r, seed=7) for r in range(2)]
    a, b = (list(s) for s in shards)
    assert len(a) == len(b) == 51 and not set(a) & set(b)
    assert len(set(a) | set(b)) == 102
    for s in shards:
        s.set_epoch(1)
    a1 = list(shards[0])
    assert a1 != a and not set(a1) & set(shards[1])
    assert list(ResumableSampler(n, 2, 0, seed=7)) == a  # seeded: same order every time
    padded = [list(ResumableSampler(n, 2, r, shuffle=False, drop_last=False)) for r in range(2)]
    assert len(padded[0]) == len(padded[1]) == 52 and set(padded[0]) | set(padded[1]) == set(range(n))


def test_sampler_resume_offset_applies_to_its_epoch_only():
    s = ResumableSampler(10, seed=3)
    full0 = list(s)
    s.set_start(epoch=0, global_consumed=4, local_consumed=4)
    assert list(s) == full0[4:] and len(s) == 10
    s.set_epoch(1)
    assert len(list(s)) == 10


def test_sampler_restored_position_wins_over_the_callers_epoch_numbers():
    # A restart at an epoch end: the checkpoint says "epoch 1, nothing consumed", Lightning re-enters its finished
    # epoch and calls set_epoch(1) then set_epoch(2) before iterating.
    reference = ResumableSampler(10, seed=3)
    reference.set_epoch(1)
    epoch1 = list(reference)
    reference.set_epoch(2)
    epoch2 = list(reference)
    s = ResumableSampler(10, seed=3)
    s.set_start(epoch=1, global_consumed=0)
    s.set_epoch(1)
    s.set_epoch(2)
    assert list(s) == epoch1  # the data's own position, not Lightning's count
    s.set_epoch(3)  # Lightning's next epoch is the data's epoch 2
    assert s.epoch == 2 and list(s) == epoch2
    # Mid-epoch restart (Lightning agrees): no offset.
    s = ResumableSampler(10, seed=3)
    s.set_start(epoch=1, global_consumed=4, local_consumed=4)
    s.set_epoch(1)
    assert list(s) == epoch1[4:] and s.epoch_offset == 0


def test_two_ranks_datamodule_see_disjoint_windows(tmp_path):
    rng = random.Random(0)
    docs = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(40)) for _ in range(10)]
    seen = []
    for rank in range(2):
        dm = make_dm(tmp_path, docs, block_size=8, batch_size=4, val_fraction=0.0)
        dm._rank_world = lambda rank=rank: (rank, 2)  # simulate two DDP ranks
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, ResumableSampler) and loader.sampler.rank == rank
        seen.append([tuple(x.tolist()) for xb, _ in loader for x in xb])
    assert len(seen[0]) == len(seen[1]) == 410 // 8 // 2
    assert len(set(seen[0] + seen[1])) == len(seen[0]) + len(seen[1])  # no window on both ranks


@pytest.mark.slow
def test_workers_give_the_same_batches(tmp_path):
    torch.manual_seed(0)
    docs = ["".join(chr(97 + (i * 5 + j) % 26) for j in range(30)) for i in range(20)]
    batches = []
    for workers in (0, 2):
        dm = make_dm(tmp_path, docs, block_size=8, batch_size=4, val_fraction=0.0, num_workers=workers)
        batches.append([x for x, _ in dm.train_dataloader()])
    assert len(batches[0]) == len(batches[1]) > 3
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_sampler_permutation_is_a_seeded_bijection_without_a_list():
    import tracemalloc

    from lightning_gpt.data.sampler import _round_keys, permuted_index

    for n in (1, 2, 7, 100, 1023, 1024, 5000):
        keys = _round_keys(3, 0)
        assert sorted(permuted_index(i, n, keys) for i in range(n)) == list(range(n))
    n = 10_000_000
    s = ResumableSampler(n, num_replicas=8, rank=3, seed=1)
    tracemalloc.start()
    it = iter(s)
    first = [next(it) for _ in range(1000)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000 and len(set(first)) == 1000  # O(1) state: no list of 10M windows
    s.set_start(epoch=0, global_consumed=8 * 5000, local_consumed=5000)
    assert next(iter(s)) == s.index_at(0, 8 * 5000 + 3)  # resumes without walking the skipped part


@pytest.mark.parametrize(("old", "new"), [(2, 1), (1, 2), (2, 3)])
def test_sampler_resume_on_another_world_size_is_exact_in_global_samples(old, new):
    n, consumed_per_rank = 101, 13
    full = ResumableSampler(n, 1, 0, seed=9)
    order = list(full)
    before = [list(ResumableSampler(n, old, r, seed=9))[:consumed_per_rank] for r in range(old)]
    seen = [i for r in range(old) for i in before[r]]
    glob = consumed_per_rank * old
    assert sorted(seen) == sorted(order[:glob])  # the first ranks consumed exactly the first global samples
    after = []
    for r in range(new):
        s = ResumableSampler(n, new, r, seed=9)
        s.set_start(0, glob, consumed_per_rank)
        rest = list(s)
        assert len(s) == consumed_per_rank + len(rest)  # what Lightning counts for the epoch
        after += rest
    dropped = (n - glob) % new  # the uneven tail, as drop_last drops it
    assert sorted(seen + after) == sorted(order[: n - dropped])  # nothing repeated, nothing skipped


def test_packed_batch_gather_equals_one_window_at_a_time(tmp_path):
    docs = ["".join(chr(97 + (i * 7 + j) % 26) for j in range(50)) for i in range(8)]
    dm = make_dm(tmp_path, docs, block_size=8, batch_size=4, val_fraction=0.0)
    dm.setup("fit")
    ds = dm.train_dataset
    indices = [5, 0, len(ds) + 3, 2 * len(ds) - 1]  # epoch 0 and epoch 1 (shifted grid)
    batch = ds.__getitems__(indices)
    for (x, y), index in zip(batch, indices):
        ex, ey = ds[index]
        assert torch.equal(x, ex) and torch.equal(y, ey)
    with pytest.raises(IndexError):
        ds.__getitems__([-1])
