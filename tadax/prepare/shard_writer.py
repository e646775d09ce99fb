"""Writing videos' records to a TFRecord file; runs in preparation's worker processes.

Imports no TensorFlow (records and TFRecord framing are written by
`record_bytes` and `tfrecord_file`), so each worker starts in a fraction of a
second and stays small. A worker encodes and writes a `Piece` (consecutive
videos of one shard) to a file of its own and sends back only its bookkeeping:
the frames never pass through another process.
"""

import dataclasses
from typing import Iterable, Optional, Tuple

from tadax.prepare import record_bytes
from tadax.prepare.annotations import Entry
from tadax.prepare.encode import Encoded, EncodeOptions, encode_entry
from tadax.prepare.tfrecord_file import TFRecordFileWriter


def write_records(path: str, results: Iterable[Encoded], progress=None) -> dict:
    """Writes the encoded videos of `results`, in order, as records of a new TFRecord file
    at `path`; a skipped video is listed, not written. `progress.update(1)` per video.
    Returns the bookkeeping: {'written': count, 'skipped': [{'source', 'reason'}, ...]}."""
    written, skipped = 0, []
    with TFRecordFileWriter(path) as writer:
        for enc in results:
            if progress is not None:
                progress.update(1)
            if enc.skipped:
                skipped.append({"source": enc.entry.path, "reason": enc.skipped})
                continue
            writer.write(record_bytes.sequence_example(
                enc.frames, label=enc.entry.label, text=enc.entry.text,
                filename=enc.entry.filename,
                start_us=enc.start_us, end_us=enc.end_us, fps=enc.fps))
            written += 1
    return {"written": written, "skipped": skipped}


@dataclasses.dataclass(frozen=True)
class Piece:
    """Consecutive videos of the `shard`-th shard to write (part `part` of it), written by
    one worker to `path`, a temporary file of its own."""
    shard: int
    part: int
    path: str
    entries: Tuple[Entry, ...]


class _QueueProgress:
    """`progress.update(n)` forwarded to the preparing process through a queue."""

    def __init__(self, queue):
        self._queue = queue

    def update(self, n: int) -> None:
        self._queue.put(n)


_progress: Optional[_QueueProgress] = None


def set_progress_queue(queue) -> None:
    """Worker initialiser: report each video done on `queue` (a multiprocessing queue)."""
    global _progress
    _progress = _QueueProgress(queue)


def write_piece(task: "tuple[Piece, EncodeOptions]") -> "tuple[Piece, dict]":
    """Decodes (one FFmpeg thread: a worker runs per core), encodes and writes one piece;
    returns it with its bookkeeping (`write_records`)."""
    piece, opts = task
    results = (encode_entry(e, opts, decode_threads=1) for e in piece.entries)
    return piece, write_records(piece.path, results, _progress)
