"""Prepared datasets in an S3-compatible object store (``s3://bucket/prefix``): ``prepare`` straight into it, and the
manifest read that ``fit`` starts with.

The store is reached with boto3 the way every AWS tool reaches it, so the same settings serve the AWS CLI, this
package and litdata's downloader (``litdata.streaming.client.S3Client`` is a plain ``boto3.Session().client("s3")``):
``AWS_ENDPOINT_URL`` for an S3-compatible store (MinIO, Cloudflare R2, Ceph, a local test server), the credentials
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, or ``AWS_PROFILE``, or an instance role) and ``AWS_DEFAULT_REGION``.
Our own client gives up after 3 attempts of at most 10 s to connect, so a missing bucket, refused credentials or an
unreachable endpoint is one paragraph within seconds (litdata's client retries up to 1000 times, so it is only used
once ours has read the manifest).

``prepare --output_dir s3://...`` tokenizes into a local staging folder with the local ``prepare`` (same layout, same
resume rules), then uploads it: ``.preparing`` first (the prefix is an unfinished prepare from then on), the chunks,
the two ``index.json`` files, and ``lightning_gpt_dataset.json`` last, then ``.preparing`` is deleted. A prefix
without the manifest is never read by ``fit``. A rerun after a kill or a failed upload reuses the staged folder (the
local prepare finds it complete) and skips the objects already uploaded from that same staged folder (same size, and
the ``.preparing`` note names the staged folder's digest); objects of an earlier attempt that the new one does not
have are deleted, and the multipart uploads a kill left open are aborted.

Why not litdata's own upload (``optimize`` with an ``s3://`` output)? Its workers upload each chunk with a client that
retries up to 1000 times, so an unreachable store hangs instead of failing, and a worker's failed upload surfaces as
several processes' tracebacks; prepare's held-out documents and multi-node merge are local files anyway. The cost of
staging: local disk for the whole dataset (~2 bytes per token) until the upload ends, and the upload follows the
tokenization instead of overlapping it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Optional

from lightning_gpt.jsonfile import check_json_size, max_json_bytes, read_json

__all__ = ["PREPARING", "StoreFolder", "is_s3", "prepare_into_store", "read_store_manifest", "reuse_prepared"]

log = logging.getLogger(__name__)

PREPARING = ".preparing"  # the same note as a local folder's (lightning_gpt.data.prepared)
_MANIFEST = "lightning_gpt_dataset.json"  # lightning_gpt.data.prepared.MANIFEST (that module imports this one)
_OURS = {"train", "val", PREPARING}  # the first path element of every object prepare writes under the prefix
_SETTINGS = (
    "Set AWS_ENDPOINT_URL for an S3-compatible store (MinIO, R2: e.g. http://127.0.0.1:9000), the credentials "
    "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and AWS_DEFAULT_REGION"
)


def is_s3(url: str) -> bool:
    """Whether ``url`` is an ``s3://`` folder."""
    return isinstance(url, str) and url.startswith("s3://")


def _split(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    return bucket, prefix.strip("/")


class StoreFolder:
    """One ``s3://bucket/prefix`` folder, through boto3 with short timeouts; every failure is one paragraph.

    Args:
        url: ``s3://bucket`` or ``s3://bucket/prefix``.
        option: the flag that named it, for messages (``--output_dir``, ``--data.source``).

    Raises:
        ValueError: not an ``s3://`` URL, or no bucket name; boto3 cannot build a client (e.g. no region).
    """

    def __init__(self, url: str, option: str) -> None:
        bucket, prefix = _split(url) if is_s3(url) else ("", "")
        if not bucket:
            raise ValueError(
                f"{option} {url!r}: an object store folder is s3://<bucket>/<prefix> (other stores: prepare into a "
                "local folder and copy it there; S3-compatible stores are reached with AWS_ENDPOINT_URL)."
            )
        self.url, self.option, self.bucket, self.prefix = url, option, bucket, prefix
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=10, read_timeout=120, retries={"max_attempts": 3, "mode": "standard"})
            try:
                self._client = boto3.session.Session().client("s3", config=config)
            except Exception as err:  # noqa: BLE001 - botocore's configuration errors come in many classes
                raise ValueError(self.describe(err, "connect to")) from None
        return self._client

    def key(self, rel: str) -> str:
        """The object key of ``rel`` (a ``/`` path inside the folder)."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def describe(self, err: BaseException, action: str) -> str:
        """One paragraph for a boto3/botocore failure while doing ``action`` (what went wrong, and the fix)."""
        endpoint = getattr(getattr(self._client, "meta", None), "endpoint_url", None) or os.environ.get(
            "AWS_ENDPOINT_URL", "AWS's default endpoint"
        )
        where = f"{self.option} {self.url!r} (endpoint {endpoint})"
        response = getattr(err, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        name = type(err).__name__
        if code in ("NoSuchBucket", "404") or (code == "" and status == 404):
            return (
                f"{where}: the bucket {self.bucket!r} does not exist. Create it first (aws s3 mb s3://{self.bucket}), "
                "or fix the name."
            )
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return f"{where}: no credentials were found to {action} the object store ({err}). {_SETTINGS}."
        if (
            code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken")
            or status == 403
        ):
            return (
                f"{where}: the object store refused the credentials ({code or status}: "
                f"{response.get('Error', {}).get('Message', err)}). Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                f"(or AWS_PROFILE) and that they may read and write s3://{self.bucket}."
            )
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError"):
            return f"{where}: the endpoint cannot be reached ({err}). {_SETTINGS}; check that the store is running."
        if name == "NoRegionError":
            return f"{where}: {err}. {_SETTINGS}."
        return f"{where}: could not {action} the object store ({name}: {err})."

    def check_bucket(self) -> None:
        """Raise one paragraph unless the bucket exists and the credentials are accepted.

        Raises:
            ValueError: missing bucket, refused or absent credentials, unreachable endpoint.
        """
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as err:  # noqa: BLE001
            raise ValueError(self.describe(err, "reach")) from None

    def read_json(self, rel: str) -> Optional[dict[str, Any]]:
        """The JSON object ``rel`` (``None`` when absent).

        Raises:
            ValueError: any other failure (one paragraph), ``rel`` is over the JSON size limit
                (``lightning_gpt.jsonfile``; checked before its body is read) or is not JSON.
        """
        where = f"{self.url}/{rel}"
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
        except Exception as err:  # noqa: BLE001
            code = str((getattr(err, "response", None) or {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404"):
                return None
            raise ValueError(self.describe(err, "read")) from None
        check_json_size(int(got.get("ContentLength") or 0), where)
        try:
            body = got["Body"].read(max_json_bytes() + 1)
        except Exception as err:  # noqa: BLE001
            raise ValueError(self.describe(err, "read")) from None
        check_json_size(len(body), where)
        try:
            value = json.loads(body)
        except ValueError:
            raise ValueError(f"{self.url}/{rel} is damaged (not JSON); run lightning-gpt prepare again.") from None
        return value if isinstance(value, dict) else {}

    def listing(self) -> dict[str, int]:
        """``{path inside the folder: size in bytes}`` of every object under the prefix."""
        root = f"{self.prefix}/" if self.prefix else ""
        out: dict[str, int] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
                for obj in page.get("Contents", []):
                    out[obj["Key"][len(root) :]] = int(obj["Size"])
        except Exception as err:  # noqa: BLE001
            raise ValueError(self.describe(err, "list")) from None
        return out

    def abort_unfinished_uploads(self) -> int:
        """Abort the multipart uploads under the prefix that a killed upload left open (the store keeps, and bills,
        their parts until they are aborted); return how many."""
        root = f"{self.prefix}/" if self.prefix else ""
        n = 0
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=root):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    n += 1
        except Exception as err:  # noqa: BLE001
            raise ValueError(self.describe(err, "clean up")) from None
        return n

    def put_json(self, rel: str, value: dict[str, Any]) -> None:
        """Write ``value`` as the object ``rel``."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=json.dumps(value).encode())
        except Exception as err:  # noqa: BLE001
            raise ValueError(self.describe(err, "write to")) from None

    def delete(self, rels: list[str]) -> None:
        """Delete the objects ``rels`` (1000 per request)."""
        try:
            for start in range(0, len(rels), 1000):
                keys = [{"Key": self.key(r)} for r in rels[start : start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        except Exception as err:  # noqa: BLE001
            raise ValueError(self.describe(err, "delete from")) from None

    def upload(self, local_dir: str, rels: list[str], resume_hint: str, progress: bool = True) -> None:
        """Upload ``<local_dir>/<rel>`` to ``rel`` for each of ``rels`` in order (a progress bar in bytes, ETA).

        Raises:
            ValueError: an upload failed (one paragraph ending with ``resume_hint``).
        """
        from boto3.s3.transfer import TransferConfig
        from tqdm import tqdm

        total = sum(os.path.getsize(os.path.join(local_dir, r)) for r in rels)
        config = TransferConfig(max_concurrency=8)
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=f"upload to {self.url}", disable=not (rels and progress)
        ) as bar:
            for rel in rels:
                try:
                    self.client.upload_file(
                        os.path.join(local_dir, rel), self.bucket, self.key(rel), Callback=bar.update, Config=config
                    )
                except Exception as err:  # noqa: BLE001
                    raise ValueError(f"{self.describe(err, 'upload to')} {resume_hint}") from None


def read_store_manifest(url: str, option: str = "--data.source") -> dict[str, Any]:
    """The manifest of a prepared ``s3://`` folder (not checked for its version here).

    Args:
        url: ``s3://bucket/prefix``.
        option: the flag that named it, for messages.

    Raises:
        ValueError: an interrupted prepare there, or the store cannot be read (one paragraph).
        FileNotFoundError: no prepared dataset there.
    """
    store = StoreFolder(url, option)
    manifest = store.read_json(_MANIFEST)
    if manifest is not None:
        return manifest
    if store.read_json(PREPARING) is not None:
        raise ValueError(
            f"{option} {url!r} holds an interrupted lightning-gpt prepare (killed or failed before its manifest was "
            "uploaded): run the same prepare command again; it finishes the upload or redoes it."
        )
    raise FileNotFoundError(
        f"{option} {url!r} is not a prepared dataset (no {_MANIFEST} there): prepare it first with lightning-gpt "
        f"prepare --data.source <your text> --output_dir {url}."
    )


def _staged_files(staging: str) -> list[str]:
    """The files of a staged folder to upload before the manifest: chunks first, then each split's ``index.json``."""
    files = []
    for split in ("train", "val"):
        folder = os.path.join(staging, split)
        if os.path.isdir(folder):
            files += [f"{split}/{name}" for name in sorted(os.listdir(folder)) if not name.startswith(".")]
    return sorted(files, key=lambda rel: (rel.endswith("index.json"), rel))


def _digest(staging: str) -> str:
    """A digest of the staged folder's manifest and index files (its chunk names, sizes and token counts)."""
    h = hashlib.sha256()
    for rel in (_MANIFEST, "train/index.json", "val/index.json"):
        path = os.path.join(staging, rel)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                h.update(rel.encode() + b"\0" + f.read())
    return h.hexdigest()


def _read_local_settings(staging: str) -> Optional[Any]:
    """The settings in a staged folder's manifest, if it has one."""
    try:
        return read_json(os.path.join(staging, _MANIFEST)).get("settings")
    except (OSError, ValueError, AttributeError):
        return None


def default_staging_dir(url: str) -> str:
    """Where ``prepare`` stages ``url`` by default: ``$TMPDIR/lightning-gpt-staging/<bucket>-<hash of the URL>``."""
    bucket, _ = _split(url)
    tag = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), "lightning-gpt-staging", f"{bucket}-{tag}")


def reuse_prepared(manifest: dict[str, Any], settings: dict[str, Any], output_dir: str, remedy: str) -> dict[str, Any]:
    """``manifest`` of an ``output_dir`` (a local folder, ``prepared.prepare_dataset``, or an ``s3://`` prefix, here)
    that holds a finished prepare: returned when it was made with ``settings`` (nothing to redo). Here rather than in
    ``prepared``, which imports this module.

    Raises:
        ValueError: it was made with other settings; ``remedy`` ends the message ("Prepare into ...").
    """
    if manifest.get("settings") == settings:
        log.info("%s is already prepared with these settings.", output_dir)
        return manifest
    raise ValueError(
        f"--output_dir {output_dir!r} already holds a prepared dataset made with other settings (source, tokenizer, "
        f"add_bos or validation split). Prepare into {remedy}"
    )


def prepare_into_store(
    url: str,
    settings: dict[str, Any],
    prepare_local: Callable[[str], dict[str, Any]],
    staging_dir: Optional[str] = None,
    num_nodes: int = 1,
    **local_options: Any,
) -> dict[str, Any]:
    """Prepare into ``url`` (``s3://bucket/prefix``): ``prepare_local(staging)`` writes the folder, which is uploaded
    with the manifest last; return the manifest (an up-to-date prefix is kept as it is).

    Args:
        url: the object store folder.
        settings: the prepare's settings (source identity, tokenizer fingerprint, split), as in the manifest.
        prepare_local: ``prepare_local(staging, **local_options)`` writes a complete prepared folder there (or keeps
            an up-to-date one) and returns its manifest.
        staging_dir: the local folder to stage in (``None``: ``default_staging_dir(url)``, where a folder staged
            with other settings is deleted first); it needs room for the whole dataset, and is removed after the
            upload.
        num_nodes: machines preparing together (only 1 here).
        local_options: passed to ``prepare_local``.

    Raises:
        ValueError: several nodes; the bucket is missing, the credentials refused, the endpoint unreachable; the
            prefix holds other objects or a dataset prepared with other settings; an upload failed (rerun resumes).
    """
    store = StoreFolder(url, "--output_dir")
    if num_nodes > 1:
        raise ValueError(
            f"--output_dir {url!r}: several machines prepare into one shared local folder "
            "(DATA_OPTIMIZER_NUM_NODES); an object store is written by one machine. Prepare on one machine into the "
            "bucket, or on several into a shared folder and copy it to the bucket (aws s3 sync <folder> " + url + ")."
        )
    store.check_bucket()
    manifest = store.read_json(_MANIFEST)
    if manifest is not None:
        remedy = f"another prefix, or delete that one first (aws s3 rm --recursive {url})."
        return reuse_prepared(manifest, settings, url, remedy)
    existing = store.listing()
    names = {rel.split("/", 1)[0] for rel in existing}
    if existing and (not names <= _OURS or PREPARING not in names):
        raise ValueError(
            f"--output_dir {url!r} is not empty and is not a prepared dataset (found: {sorted(existing)[:5]}). "
            "Give an empty or new prefix."
        )
    note = store.read_json(PREPARING) if existing else None
    if note is not None:
        log.warning("%s holds an interrupted prepare; finishing it.", url)
        if store.abort_unfinished_uploads():
            log.warning("aborted the multipart uploads a killed upload left open under %s.", url)
    staging = staging_dir or default_staging_dir(url)
    if staging_dir is None and _read_local_settings(staging) not in (None, settings):
        shutil.rmtree(staging)  # our own staging of an earlier prepare into this URL, with other settings
    store.put_json(PREPARING, {"settings": settings})  # from now on the prefix is an unfinished prepare
    try:
        local = prepare_local(staging, **local_options)
    except ValueError:
        if not existing:
            store.delete([PREPARING])  # a refused source: the prefix is left as it was (empty)
        raise
    digest = _digest(staging)
    files = _staged_files(staging)
    resumable = note is not None and note.get("staged") == digest
    todo = [
        rel for rel in files if not (resumable and existing.get(rel) == os.path.getsize(os.path.join(staging, rel)))
    ]
    if resumable and len(todo) < len(files):
        log.warning(
            "%d of %d files were uploaded by the interrupted prepare; uploading the rest.",
            len(files) - len(todo),
            len(files),
        )
    store.put_json(PREPARING, {"settings": settings, "staged": digest})
    store.delete(sorted(set(existing) - set(files) - {PREPARING}))  # an earlier attempt's objects that are not ours now
    hint = f"Run the same prepare again: it uploads the rest (the tokenized folder stays in {staging!r})."
    store.upload(staging, todo, hint)
    store.upload(staging, [_MANIFEST], hint, progress=False)  # last: from here on the prefix is a complete dataset
    store.delete([PREPARING])
    shutil.rmtree(staging, ignore_errors=True)
    return local
