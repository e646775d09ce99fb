"""Reading prepared records: the shard files of a split, and one record parsed.

The layout is `tadax.data.record_format` (DMVR's `tf.train.SequenceExample`,
written by `tadax.prepare`). Data written by DMVR's scripts (no fps / frame
count) is read as well.
"""

import re
from typing import List, Sequence

import tensorflow as tf

from tadax.data.record_format import END_KEY, FILENAME_KEY, FPS_KEY, FRAMES_KEY, LABEL_KEY, \
    START_KEY
from tadax.paths import user_path

DEFAULT_FPS = 30.0


def shard_files(data_dir: str, split: str) -> List[str]:
    """Sorted shard paths of `split` in `data_dir` (local or gs://...); raises
    FileNotFoundError naming what is missing."""
    folder = user_path(data_dir)
    name = re.compile(rf"{re.escape(split)}-\d{{5}}-of-\d{{5}}")
    files = sorted(str(f) for f in (folder.iterdir() if folder.is_dir() else ())
                   if name.fullmatch(f.name))
    if not files:
        raise FileNotFoundError(
            f"no shards '{split}-NNNNN-of-NNNNN' in {data_dir!r}: prepare the dataset with "
            "`python -m tadax.prepare ...` or set data.data_dir")
    counts = {int(f[-5:]) for f in files}
    if len(counts) != 1 or len(files) != counts.pop():
        raise FileNotFoundError(f"incomplete shard set for split {split!r} in {data_dir!r}: "
                                f"{len(files)} files, names say otherwise (an unfinished preparation?)")
    return files


def parse(serialized):
    """Serialized SequenceExample -> dict: `frames` (N,) JPEG strings, `label` int32,
    `fps` float32 (from the record, else from its timestamps, else 30), `num_frames` int32,
    `filename` string."""
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
            FILENAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
            START_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
            END_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
            FPS_KEY: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
        },
        sequence_features={FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
    frames = sequence[FRAMES_KEY]
    n = tf.shape(frames)[0]
    span = tf.cast(context[END_KEY] - context[START_KEY], tf.float32) / 1e6
    from_span = tf.where(span > 0, tf.cast(n, tf.float32) / tf.maximum(span, 1e-6), DEFAULT_FPS)
    fps = tf.where(context[FPS_KEY] > 0, context[FPS_KEY], from_span)
    return {"frames": frames, "label": tf.cast(context[LABEL_KEY], tf.int32), "fps": fps,
            "num_frames": n, "filename": context[FILENAME_KEY]}


def count_records(files: Sequence[str]) -> int:
    """Number of records in `files` (reads them through once)."""
    ds = tf.data.TFRecordDataset(list(files))
    return int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1).numpy())
