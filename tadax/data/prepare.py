"""Writing a split: entries -> `NAME-00000-of-000NN` shards, resumable, with a report.

Videos are spread over shards by a fixed shuffle of the annotation order (so
every shard mixes classes and a re-run assigns the same videos to the same
shard). A shard is written to a temporary name and renamed when complete, and
its bookkeeping (`_meta/SHARD.json`: written and skipped videos) is saved
beside it; a re-run skips completed shards, so an interrupted preparation
re-run produces the same shards. Bad videos are skipped, counted, and listed
in `NAME-report.txt` with the reason; the run never stops for them.
"""

import collections
import itertools
import json
import multiprocessing
import os
import time
from typing import Dict, Iterable, List, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tadax.data import records
from tadax.data.annotations import Entry, Problem
from tadax.data.encode import Encoded, EncodeOptions, encode_task

META_DIR = "_meta"


def assign_shards(entries: Sequence[Entry], num_shards: int, seed: int = 0) -> List[List[Entry]]:
    """Entries -> `num_shards` lists: a seeded shuffle of the given order, dealt round-robin."""
    order = np.random.default_rng(seed).permutation(len(entries))
    shards: List[List[Entry]] = [[] for _ in range(num_shards)]
    for i, j in enumerate(order):
        shards[i % num_shards].append(entries[j])
    return shards


def _reason_kind(reason: str) -> str:
    """A short category of a skip reason for the summary counts."""
    for key in ("not found", "unknown label", "out of range", "empty file", "no frames",
                "cannot open", "corrupt", "no video stream", "no JPEG", "unreadable"):
        if key in reason:
            return key
    return "other"


def _write_shard(path: str, meta_path: str, results: Iterable[Encoded], bar) -> dict:
    """Writes encoded videos to `path` (via a temporary name) and its bookkeeping."""
    tmp = path + ".tmp"
    written, skipped = 0, []
    with tf.io.TFRecordWriter(tmp) as writer:
        for enc in results:
            bar.update(1)
            if enc.skipped:
                skipped.append({"source": enc.entry.path, "reason": enc.skipped})
                continue
            writer.write(records.sequence_example(
                enc.frames, label=enc.entry.label, text=enc.entry.text,
                filename=os.path.basename(enc.entry.path), start_us=enc.start_us,
                end_us=enc.end_us, fps=enc.fps))
            written += 1
    meta = {"written": written, "skipped": skipped}
    with tf.io.gfile.GFile(meta_path + ".tmp", "w") as f:
        json.dump(meta, f)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    tf.io.gfile.rename(meta_path + ".tmp", meta_path, overwrite=True)
    return meta


def prepare_split(entries: Sequence[Entry], problems: Sequence[Problem], *, out_dir: str,
                  name: str, num_shards: int, opts: EncodeOptions, workers: int = 1,
                  quiet: bool = False) -> dict:
    """Writes `entries` as `out_dir/NAME-XXXXX-of-NNNNN` shards; returns the summary.

    problems: annotation lines already rejected (missing file, unknown label);
        they are counted and reported with the skipped videos.
    workers: decoding processes (1: in this process).
    Summary (also in `NAME.json`): videos written, skipped (by reason), shards
    written now vs. found complete; the full list is in `NAME-report.txt`.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    tf.io.gfile.makedirs(os.path.join(out_dir, META_DIR))
    shards = assign_shards(entries, num_shards)
    todo, metas = [], {}
    for k, shard in enumerate(shards):
        base = records.shard_name(name, k, num_shards)
        path, meta_path = os.path.join(out_dir, base), os.path.join(out_dir, META_DIR, base + ".json")
        if tf.io.gfile.exists(path) and tf.io.gfile.exists(meta_path):
            with tf.io.gfile.GFile(meta_path) as f:
                metas[k] = json.load(f)
        else:
            todo.append((k, path, meta_path, shard))
    done_videos = sum(len(shards[k]) for k in metas)
    start = time.time()
    bar = tqdm(total=len(entries), initial=done_videos, unit="video", desc=name,
               disable=quiet, smoothing=0.1)
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(workers) if workers > 1 and todo else None
    # One ordered stream of work over all missing shards: no idle workers between shards.
    tasks = [(e, opts) for _, _, _, shard in todo for e in shard]
    results = pool.imap(encode_task, tasks) if pool is not None else map(encode_task, tasks)
    try:
        for k, path, meta_path, shard in todo:
            metas[k] = _write_shard(path, meta_path, itertools.islice(results, len(shard)), bar)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
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
    with tf.io.gfile.GFile(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with tf.io.gfile.GFile(os.path.join(out_dir, f"{name}-report.txt"), "w") as f:
        f.write(f"# {name}: {summary['num_examples']} videos written, {len(skipped)} skipped\n")
        for s in skipped:
            f.write(f"{s['source']}\t{s['reason']}\n")
    return summary


def format_summary(summary: Dict) -> str:
    """One human-readable paragraph of a `prepare_split` summary."""
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary["skipped_by_reason"].items()))
    return (f"{summary['name']}: {summary['num_examples']} videos written in "
            f"{summary['num_shards']} shards ({summary['shards_already_complete']} were already "
            f"complete), {summary['num_skipped']} skipped" + (f" ({reasons})" if reasons else "")
            + f"; {summary['seconds']} s")
