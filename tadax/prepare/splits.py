"""Writing a split: entries -> `NAME-00000-of-000NN` shards, resumable, with a report.

Videos are spread over shards by a fixed shuffle of the annotation order (so
every shard mixes classes and a re-run assigns the same videos to the same
shard). A shard is written to a temporary name and renamed when complete, and
its bookkeeping (`_meta/SHARD.json`: written and skipped videos) is saved
beside it; a re-run skips completed shards, so an interrupted preparation
re-run produces the same shards byte for byte, in any process and with any runner
(local worker processes or an Apache Beam pipeline: `beam`; one shard: `shards`). A split's
fingerprint (`_meta/NAME.fingerprint.json`: options, annotation contents,
videos' sizes and times) is checked first, so a re-run never mixes in work
made from other inputs. Bad videos are skipped, counted, and listed
in `NAME-report.txt` with the reason; the run never stops for them.
"""

import collections
import json
import multiprocessing
import queue as queue_lib
import re
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from etils import epath
from tqdm import tqdm

from tadax.data.record_format import META_DIR, shard_name
from tadax.prepare import fingerprint as fingerprint_lib
from tadax.prepare import shard_writer
from tadax.prepare.annotations import Entry, Problem
from tadax.prepare.encode import EncodeOptions, encode_entry
from tadax.prepare.shards import ShardJob, commit_shard, write_shard

_PROGRESS_SECONDS = 0.5       # how often the progress bar hears from the workers


def assign_shards(entries: Sequence[Entry], num_shards: int, seed: int = 0) -> List[List[Entry]]:
    """Entries -> `num_shards` lists: a seeded shuffle of the given order, dealt round-robin."""
    order = np.random.default_rng(seed).permutation(len(entries))
    shards: List[List[Entry]] = [[] for _ in range(num_shards)]
    for i, j in enumerate(order):
        shards[i % num_shards].append(entries[j])
    return shards


def _reason_kind(reason: str) -> str:
    """A short category of a skip reason for the summary counts."""
    for key in ("malformed annotation", "not found", "unknown label", "out of range",
                "empty file", "no frames", "cannot open", "corrupt", "no video stream", "no JPEG",
                "unreadable"):
        if key in reason:
            return key
    return "other"


class StaleOutputError(ValueError):
    """`--out` already holds the split, prepared from other inputs or options; `change`
    says what differs, in a few words."""

    def __init__(self, message: str, change: str):
        super().__init__(message)
        self.change = change


def _shard_file_names(out_dir: str, name: str) -> List[epath.Path]:
    """Every shard, partial shard, shard bookkeeping and Beam job file of split `name`."""
    pattern = re.compile(rf"{re.escape(name)}-\d{{5}}-of-\d{{5}}(\.tmp)?(\.job)?(\.json)?(\.tmp)?")
    out = epath.Path(out_dir)
    return [f for folder in (out, out / META_DIR) if folder.exists()
            for f in folder.iterdir() if pattern.fullmatch(f.name)]


def _fingerprint_path(out_dir: str, name: str) -> epath.Path:
    return epath.Path(out_dir) / META_DIR / f"{name}.fingerprint.json"


def check_fingerprint(out_dir: str, name: str, fingerprint: dict) -> None:
    """Raises `StaleOutputError` (one line: what changed, what to do) when `out_dir` holds
    split `name` made from other inputs or options than `fingerprint` says."""
    path = _fingerprint_path(out_dir, name)
    if path.exists():
        change = fingerprint_lib.describe_change(json.loads(path.read_text()), fingerprint)
    elif _shard_file_names(out_dir, name):
        change = "it has no fingerprint (prepared by an older version)"
    else:
        change = ""
    if change:
        raise StaleOutputError(
            f"{out_dir} already holds split {name!r} prepared differently: {change}; "
            f"write to a new --out, or pass --overwrite to replace split {name!r}", change)


def record_fingerprint(out_dir: str, name: str, fingerprint: dict, overwrite: bool) -> None:
    """Saves `fingerprint` for split `name`; `overwrite` first deletes the split's shards,
    bookkeeping, summary and report."""
    out = epath.Path(out_dir)
    if overwrite:
        for f in _shard_file_names(out_dir, name) + [out / f"{name}.json",
                                                     out / f"{name}-report.txt"]:
            if f.exists():
                f.unlink()
    path = _fingerprint_path(out_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fingerprint, sort_keys=True))


def _remove_temporaries(out_dir: str, name: str) -> None:
    """Removes what interrupted runs left of split `name`'s shards: temporary shard files
    and pieces (`NAME-00000-of-00008...tmp`) and bookkeeping (`_meta/...json...tmp`). One
    listing per folder, however many shards."""
    folder = epath.Path(out_dir)
    pattern = f"{name}-{'[0-9]' * 5}-of-{'[0-9]' * 5}"
    for f in [*folder.glob(f"{pattern}*.tmp"), *(folder / META_DIR).glob(f"{pattern}.json*.tmp")]:
        f.unlink()


def plan_split(entries: Sequence[Entry], *, out_dir: str, name: str, num_shards: int
               ) -> Tuple[List[ShardJob], Dict[int, dict]]:
    """(shards still to write, {index: bookkeeping} of the shards already complete)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    epath.Path(out_dir, META_DIR).mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out_dir, name)
    todo, done = [], {}
    for k, shard in enumerate(assign_shards(entries, num_shards)):
        base = shard_name(name, k, num_shards)
        path = str(epath.Path(out_dir) / base)
        meta_path = str(epath.Path(out_dir) / META_DIR / f"{base}.json")
        if epath.Path(path).exists() and epath.Path(meta_path).exists():
            done[k] = json.loads(epath.Path(meta_path).read_text())
        else:
            todo.append(ShardJob(k, path, meta_path, tuple(shard)))
    return todo, done


def split_into_pieces(todo: Sequence[ShardJob], workers: int, token: str
                      ) -> List[shard_writer.Piece]:
    """The local workers' units of work: each shard whole, or, with fewer shards than
    workers, each cut into ceil(workers / shards) runs of consecutive videos, so that every
    worker has work. Piece files are named after their shard, part and `token`."""
    per_shard = max(1, -(-workers // max(1, len(todo))))
    pieces = []
    for i, job in enumerate(todo):
        parts = max(1, min(per_shard, len(job.entries)))
        bounds = np.linspace(0, len(job.entries), parts + 1).round().astype(int)
        pieces += [shard_writer.Piece(i, k, f"{job.path}.part{k:04d}.{token}.tmp",
                                      tuple(job.entries[bounds[k]:bounds[k + 1]]))
                   for k in range(parts)]
    return pieces


def _drain(queue, progress) -> None:
    """Passes the videos the workers reported done on to `progress`."""
    while True:
        try:
            progress.update(queue.get_nowait())
        except queue_lib.Empty:
            return


def _write_locally(todo: Sequence[ShardJob], opts: EncodeOptions, workers: int, progress
                   ) -> Dict[int, dict]:
    """Writes `todo` with `workers` processes (1: in this process). Worker processes write
    pieces of shards themselves and send back only bookkeeping; this process joins each
    shard's pieces when the last is written. Nothing per video passes through it: its work
    is a commit per shard."""
    if workers == 1 or not todo:
        # FFmpeg's threads cut the wall time of large frames in a single process (720p:
        # 0.15 s a clip instead of 0.26 s, the same CPU time).
        return {job.index: write_shard(job, (encode_entry(e, opts, decode_threads=0)
                                             for e in job.entries), progress)
                for job in todo}
    token = uuid.uuid4().hex
    pieces = split_into_pieces(todo, workers, token)
    parts_of = collections.Counter(p.shard for p in pieces)
    finished: Dict[int, Dict[int, Tuple[str, dict]]] = collections.defaultdict(dict)
    metas = {}
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    pool = ctx.Pool(min(workers, len(pieces)), initializer=shard_writer.set_progress_queue,
                    initargs=(queue,))
    try:
        results = pool.imap_unordered(shard_writer.write_piece, [(p, opts) for p in pieces])
        while len(metas) < len(todo):
            try:
                piece, meta = results.next(timeout=_PROGRESS_SECONDS)
            except multiprocessing.TimeoutError:
                _drain(queue, progress)
                continue
            _drain(queue, progress)
            done = finished[piece.shard]
            done[piece.part] = (piece.path, meta)
            if len(done) == parts_of[piece.shard]:
                job, parts = todo[piece.shard], [done[k] for k in sorted(done)]
                merged = {"written": sum(m["written"] for _, m in parts),
                          "skipped": [s for _, m in parts for s in m["skipped"]]}
                commit_shard(job, [path for path, _ in parts], merged, token)
                metas[job.index] = merged
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    _drain(queue, progress)
    return metas


def prepare_split(entries: Sequence[Entry], problems: Sequence[Problem], *, out_dir: str,
                  name: str, num_shards: int, opts: EncodeOptions, workers: int = 1,
                  quiet: bool = False, beam_args: Optional[Sequence[str]] = None) -> dict:
    """Writes `entries` as `out_dir/NAME-XXXXX-of-NNNNN` shards; returns the summary.

    problems: annotation lines already rejected (missing file, unknown label);
        they are counted and reported with the skipped videos.
    workers: decoding processes (1: in this process).
    beam_args: write the shards with an Apache Beam pipeline run with these
        pipeline options (e.g. `--runner DirectRunner`) instead of locally; the
        shards and report are the same bytes.
    Summary (also in `NAME.json`): videos written, skipped (by reason), shards
    written now vs. found complete; the full list is in `NAME-report.txt`.
    """
    todo, metas = plan_split(entries, out_dir=out_dir, name=name, num_shards=num_shards)
    start = time.time()
    if beam_args is not None:
        from tadax.prepare import beam     # Apache Beam: an optional extra

        metas.update(beam.write_shards(todo, opts, beam_args))
    else:
        done_videos = len(entries) - sum(len(job.entries) for job in todo)
        with tqdm(total=len(entries), initial=done_videos, unit="video", desc=name,
                  disable=quiet, smoothing=0.1) as bar:
            metas.update(_write_locally(todo, opts, workers, bar))
    skipped = [dict(s) for k in sorted(metas) for s in metas[k]["skipped"]]
    skipped += [{"source": p.source, "reason": p.reason} for p in problems]
    summary = {
        "name": name,
        "num_examples": sum(m["written"] for m in metas.values()),
        "num_shards": num_shards,
        "num_skipped": len(skipped),
        "skipped_by_reason": dict(collections.Counter(_reason_kind(s["reason"]) for s in skipped)),
        "shards_written_now": len(todo),
        "shards_already_complete": num_shards - len(todo),
        "short_side": opts.short_side,
        "target_fps": opts.target_fps,
        "seconds": round(time.time() - start, 1),
    }
    out = epath.Path(out_dir)
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    (out / f"{name}-report.txt").write_text(
        f"# {name}: {summary['num_examples']} videos written, {len(skipped)} skipped\n"
        + "".join(f"{s['source']}\t{s['reason']}\n" for s in skipped))
    return summary


def format_summary(summary: Dict) -> str:
    """One human-readable paragraph of a `prepare_split` summary."""
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary["skipped_by_reason"].items()))
    return (f"{summary['name']}: {summary['num_examples']} videos written in "
            f"{summary['num_shards']} shards ({summary['shards_already_complete']} were already "
            f"complete), {summary['num_skipped']} skipped" + (f" ({reasons})" if reasons else "")
            + f"; {summary['seconds']} s")
