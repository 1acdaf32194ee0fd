"""Hugging Face datasets: a hub id, a builder name with ``data_files`` (``json``, ``parquet``, ``text``...), a local
dataset folder, or a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""

from __future__ import annotations

import itertools
import os
from typing import Any, Iterator, Optional, Union

from lightning_gpt.data.sources.base import READER_VERSION, Skips, TextSource, capped
from lightning_gpt.data.sources.files import files_fingerprint
from lightning_gpt.data.sources.readers import text_value

__all__ = ["DataFiles", "HFSource", "check_data_files"]

# What ``datasets.load_dataset(data_files=...)`` takes: a path or glob, a list of them, or split -> path(s).
DataFiles = Union[str, list[str], dict[str, Union[str, list[str]]]]


def check_data_files(data_files: Any) -> None:
    """Raise ``ValueError`` unless ``data_files`` is ``None``, a non-empty string, a non-empty list of them, or a
    non-empty mapping from split names to those.

    Args:
        data_files: the value to check.
    """

    def paths(value: Any) -> bool:
        if isinstance(value, str):
            return bool(value.strip())
        return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) and v for v in value)

    ok = data_files is None or paths(data_files)
    if isinstance(data_files, dict):
        ok = bool(data_files) and all(isinstance(k, str) and paths(v) for k, v in data_files.items())
    if not ok:
        raise ValueError(
            f"data_files must be a path or glob, a list of them, or a mapping from split to them (as "
            f"datasets.load_dataset takes it), e.g. 'data/*.jsonl' or {{'train': 'a.jsonl', 'validation': "
            f"'b.jsonl'}}; got {data_files!r}."
        )


def _saved_kind(path: str) -> Optional[str]:
    """``"Dataset"`` or ``"DatasetDict"`` for a ``save_to_disk`` folder, else ``None``."""
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return "DatasetDict"
    if os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")):
        return "Dataset"
    return None


def _reason(err: BaseException) -> str:
    """An error's own words, and those of what caused it (``datasets`` wraps Arrow's in a generic one)."""
    words = f"{type(err).__name__}: {err}"
    cause = err.__cause__ or err.__context__
    return f"{words}; caused by {type(cause).__name__}: {cause}" if cause is not None else words


def _is_network_error(err: BaseException) -> bool:
    names = " ".join(c.__name__ for c in type(err).__mro__)
    return isinstance(err, (ConnectionError, TimeoutError)) or any(
        word in names for word in ("Offline", "Connection", "Timeout", "HTTPError")
    )


class HFSource(TextSource):
    """A Hugging Face dataset, read with ``datasets`` (a hub id, a builder name, a local dataset folder) or, for a
    ``save_to_disk`` folder, with ``datasets.load_from_disk`` (memory-mapped, never copied).

    The ``text_column`` must be a string feature (a number or list column is an error naming its type); null, empty
    and whitespace-only rows are skipped and counted. Local data files given through ``data_files`` (or found in a
    local dataset folder) are identified by ``stat``, as local sources are, and a ``datasets`` cache older than a
    data file's last change is rebuilt (``datasets`` itself compares modification times only, which ``cp -p`` and
    ``rsync -a`` restore).

    Args:
        dataset_name: hub id, builder name (``json``, ``parquet``, ``text``...), local dataset folder or
            ``save_to_disk`` folder.
        dataset_config: the configuration name, if the dataset has several.
        split: which split to read (of a ``DatasetDict`` folder too); a ``save_to_disk`` folder of one ``Dataset``
            has no splits and takes only the default ``train``.
        text_column: the column holding the text.
        streaming: iterate without downloading the whole dataset first (only ``max_chars`` of it is tokenized). A
            streamed dataset has no fingerprint, so its cache key is name/config/split/column/``max_chars``: delete
            the cache entry (or change ``max_chars``) if the remote data changes. Ignored for ``save_to_disk``
            folders (they are memory-mapped).
        max_chars: cap on the total characters; ``None`` keeps everything.
        data_files: forwarded to ``datasets.load_dataset``: a path or glob, a list, or a mapping from split to
            them (relative paths are relative to a dataset folder, else to the working directory).
    """

    def __init__(
        self,
        dataset_name: str,
        dataset_config: Optional[str] = None,
        split: str = "train",
        text_column: str = "text",
        streaming: bool = False,
        max_chars: Optional[int] = None,
        data_files: Optional[DataFiles] = None,
    ) -> None:
        check_data_files(data_files)
        self.dataset_name = dataset_name
        self.dataset_config = dataset_config
        self.split = split
        self.text_column = text_column
        self.max_chars = max_chars
        self.data_files = data_files
        self.saved = _saved_kind(os.path.expanduser(dataset_name))
        self.streaming = streaming and self.saved is None
        self.name = f"hf://{dataset_name}" + (f" ({dataset_config})" if dataset_config else "") + f" [{split}]"
        self.skips = Skips(self.name)
        self._ds: Any = None
        self._local_files: list[str] = []

    def dataset(self) -> Any:
        """The loaded ``datasets.Dataset`` (or ``IterableDataset`` when streaming), its text column checked.

        Raises:
            FileNotFoundError: the dataset does not exist.
            ValueError: the hub cannot be reached, the split or column is missing, or the column is not text.
        """
        if self._ds is None:
            ds = self._load_saved() if self.saved else self._load()
            columns = ds.column_names
            if columns is not None and self.text_column not in columns:
                raise ValueError(
                    f"text_column={self.text_column!r} is not a column of {self.name}; available columns: "
                    f"{sorted(columns)}. Set text_column to the column that holds the text."
                )
            feature = (ds.features or {}).get(self.text_column)
            if feature is not None and getattr(feature, "dtype", None) not in ("string", "large_string"):
                raise ValueError(
                    f"text_column={self.text_column!r} of {self.name} is of type {feature}, not a string; only text "
                    "is trained on. Set text_column to the column that holds the text."
                )
            self._ds = ds
        return self._ds

    def _load_saved(self) -> Any:
        import datasets

        path = os.path.expanduser(self.dataset_name)
        if self.data_files is not None:
            raise ValueError(
                f"source={self.name!r} is a folder written by save_to_disk, which has no data_files to choose; leave "
                "data_files unset (choose a split with split)."
            )
        if self.saved == "Dataset" and self.split != "train":
            raise ValueError(
                f"source={self.name!r} is a save_to_disk folder of one Dataset, which has no splits, so "
                f"split={self.split!r} cannot be chosen (reading it anyway would give the same rows to every split). "
                "Leave split at 'train' and hold out validation data with val_fraction or val_source, or save a "
                "DatasetDict."
            )
        try:
            ds = datasets.load_from_disk(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"source={self.name!r}: could not load the save_to_disk folder ({err}).") from None
        if self.saved == "DatasetDict":
            if self.split not in ds:
                raise ValueError(
                    f"split={self.split!r} is not in the DatasetDict folder {path!r}; its splits: {sorted(ds)}. Set "
                    "split (and val_split) to one of them."
                )
            ds = ds[self.split]
        return ds

    def _load(self) -> Any:
        import datasets

        try:
            builder = datasets.load_dataset_builder(self.dataset_name, self.dataset_config, data_files=self.data_files)
            files = builder.config.data_files or {}
            self._local_files = sorted({f for fs in files.values() for f in fs if os.path.isfile(f)})
            if self.streaming:
                return builder.as_streaming_dataset(split=self.split)
            builder.download_and_prepare()
            ds = builder.as_dataset(split=self.split)
            if self._cache_older_than_files(ds):
                builder.download_and_prepare(download_mode="force_redownload")
                ds = builder.as_dataset(split=self.split)
            return ds
        except FileNotFoundError as err:
            raise FileNotFoundError(f"source={self.name!r}: dataset not found ({err}).") from err
        except Exception as err:  # noqa: BLE001 - network errors come in many classes (requests, httpx, builtins)
            if not _is_network_error(err):
                if isinstance(err, (ValueError, KeyError, datasets.exceptions.DatasetsError)):
                    raise ValueError(f"source={self.name!r}: could not load the dataset ({_reason(err)}).") from None
                raise
            raise ValueError(
                f"source={self.name!r}: the Hugging Face Hub could not be reached ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no details'}). Offline mode "
                "(HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1) only reads datasets already in the local Hugging Face "
                "cache: run once online to download it, unset HF_HUB_OFFLINE, or point source at local files "
                "(a .txt/.jsonl/.parquet path, or hf://<local dataset folder>)."
            ) from None

    def _cache_older_than_files(self, ds: Any) -> bool:
        """Whether a local data file changed after ``datasets`` built its cache (its ``ctime`` is newer)."""
        cached = [c["filename"] for c in ds.cache_files if os.path.isfile(c["filename"])]
        if not cached or not self._local_files:
            return False
        built = min(os.stat(f).st_mtime_ns for f in cached)
        return any(os.stat(f).st_ctime_ns > built for f in self._local_files)

    def _read_all(self) -> Iterator[str]:
        self.skips.reset()
        try:
            yield from self.texts(self.dataset(), self.skips)
        except GeneratorExit:
            self.skips.report()
            raise
        self.skips.report()

    def texts(self, ds: Any, skips: Skips, first_row: int = 1, where: str = "row") -> Iterator[str]:
        """The checked ``text_column`` strings of ``ds``: this source's dataset, or a shard of it (``prepare``).

        Args:
            ds: a ``datasets.Dataset`` or ``IterableDataset`` with ``text_column``.
            skips: where null and blank rows are counted.
            first_row: the number of ``ds``'s first row in this source, for messages.
            where: the word before a row's number in messages (e.g. ``"shard 3, row"`` for a streamed shard).

        Raises:
            ValueError: a value is not text, a streamed row lacks the column or cannot be read (naming the row).
        """
        col = self.text_column
        for i, value in enumerate(self._values(ds, first_row, where), first_row):
            text = text_value(value, f"{self.name} {where} {i}", col, skips)
            if text is not None:
                yield text

    def _values(self, ds: Any, first_row: int, where: str) -> Iterator[Any]:
        col = self.text_column
        if not self.streaming:
            table = ds.select_columns([col])
            for start in range(0, len(table), 1024):
                yield from table[start : start + 1024][col]
            return
        import pyarrow as pa

        rows = iter(ds)
        for i in itertools.count(first_row):
            try:
                row = next(rows)
            except StopIteration:
                return
            except pa.ArrowException as err:  # e.g. a later file whose column types differ from the first's
                raise ValueError(f"{self.name} {where} {i}: could not be read ({_reason(err)}).") from None
            if col not in row:
                raise ValueError(f"{self.name} {where} {i}: text_column={col!r} is missing from this row.")
            yield row[col]

    def documents(self) -> Iterator[str]:
        return capped(self._read_all(), self.max_chars)

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "kind": "hf",
            "reader": READER_VERSION,
            "dataset": self.dataset_name,
            "config": self.dataset_config,
            "split": self.split,
            "text_column": self.text_column,
            "streaming": self.streaming,
            "max_chars": self.max_chars,
            "data_files": self.data_files,
        }
        ds = self.dataset()  # loads (or memory-maps) it: its problems show before anything is built
        if self.saved:
            folder = os.path.abspath(os.path.expanduser(self.dataset_name))
            ident["saved"] = files_fingerprint(sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs))
        elif self._local_files:
            ident["files"] = files_fingerprint(self._local_files)
        if not self.streaming:
            ident["fingerprint"] = ds._fingerprint
        return ident
