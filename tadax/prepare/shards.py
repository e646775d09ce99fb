"""One shard of a split: what it holds (`ShardJob`), writing it whole, committing it in place.

A shard is written under a temporary name of its writer's own and renamed, with
its bookkeeping (`_meta/SHARD.json`: videos written and skipped), only when
complete, so a reader or a re-run never sees half a shard. The local path
(`splits`) and the Beam runner (`beam`) both write through here, so their shards
are the same bytes.
"""

import dataclasses
import json
import uuid
from typing import Iterable, Sequence, Tuple

import tensorflow as tf
from etils import epath

from tadax.prepare import shard_writer
from tadax.prepare.annotations import Entry
from tadax.prepare.encode import Encoded, EncodeOptions, encode_entry

_COPY_CHUNK = 1 << 24         # bytes per read when joining a shard's pieces


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One shard to write: its index, file, bookkeeping file and videos (in record order)."""
    index: int
    path: str
    meta_path: str
    entries: Tuple[Entry, ...]


def commit_shard(job: ShardJob, parts: Sequence[str], meta: dict, token: str) -> None:
    """Makes `job.path` from `parts`, TFRecord files of its consecutive videos (renamed if
    one, else concatenated: TFRecord files join into one), and saves its bookkeeping
    beside it. The shard appears only complete, under its final name."""
    if len(parts) == 1:
        tmp = parts[0]
    else:
        tmp = f"{job.path}.{token}.tmp"
        with tf.io.gfile.GFile(tmp, "wb") as out:
            for part in parts:
                with tf.io.gfile.GFile(part, "rb") as f:
                    while chunk := f.read(_COPY_CHUNK):
                        out.write(chunk)
        for part in parts:
            tf.io.gfile.remove(part)
    meta_tmp = f"{job.meta_path}.{token}.tmp"
    epath.Path(meta_tmp).write_text(json.dumps(meta))
    tf.io.gfile.rename(tmp, job.path, overwrite=True)
    tf.io.gfile.rename(meta_tmp, job.meta_path, overwrite=True)


def write_shard(job: ShardJob, results: Iterable[Encoded], progress=None) -> dict:
    """Writes the encoded videos of `job` (via a temporary name of this call's own, so two
    writers of one shard never share a file) and its bookkeeping.

    results: `Encoded` of `job.entries`, in that order. The same bytes whichever
    process or runner calls this. Returns the bookkeeping (`written`, `skipped`).
    """
    token = uuid.uuid4().hex
    tmp = f"{job.path}.{token}.tmp"
    meta = shard_writer.write_records(tmp, results, progress)
    commit_shard(job, [tmp], meta, token)
    return meta


def encode_and_write_shard(job: ShardJob, opts: EncodeOptions) -> dict:
    """Decodes, encodes and writes one whole shard in this process (a distributed runner's unit
    of work, with a worker process per core: one decoding thread); returns its bookkeeping."""
    return write_shard(job, (encode_entry(e, opts, decode_threads=1) for e in job.entries))
