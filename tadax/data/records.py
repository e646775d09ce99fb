"""The on-disk format: DMVR-layout `tf.train.SequenceExample` records in sharded TFRecords.

Context: `clip/label/index` (int64), `clip/label/text`, `video/filename`,
`clip/start/timestamp` / `clip/end/timestamp` (microseconds), and ours:
`video/fps` (float) and `video/num_frames` (int64). Feature list:
`image/encoded`, one JPEG per frame. Shards are `NAME-00000-of-00128`.
Data written by DMVR's scripts (no fps / frame count) is read as well.
"""

import re
from typing import List, Sequence

import tensorflow as tf

from tadax.paths import user_path

FRAMES_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"
START_KEY = "clip/start/timestamp"
END_KEY = "clip/end/timestamp"
FPS_KEY = "video/fps"
NUM_FRAMES_KEY = "video/num_frames"
DEFAULT_FPS = 30.0


def shard_name(name: str, index: int, count: int) -> str:
    """`NAME-00003-of-00128`."""
    return f"{name}-{index:05d}-of-{count:05d}"


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
            "`python data/prepare.py ...` or set data.data_dir")
    counts = {int(f[-5:]) for f in files}
    if len(counts) != 1 or len(files) != counts.pop():
        raise FileNotFoundError(f"incomplete shard set for split {split!r} in {data_dir!r}: "
                                f"{len(files)} files, names say otherwise (an unfinished preparation?)")
    return files


def _field_header(field: int, length: int) -> bytes:
    """Protocol-buffer wire header of a length-delimited field (wire type 2): tag, length."""
    header = bytearray()
    for value in ((field << 3) | 2, length):
        while value > 0x7F:
            header.append((value & 0x7F) | 0x80)
            value >>= 7
        header.append(value)
    return bytes(header)


def _frames_field(frames_jpeg: Sequence[bytes]) -> bytes:
    """SequenceExample field 2 (`feature_lists`) holding `{FRAMES_KEY: one BytesList per
    frame}`, in wire format: the bytes protobuf's own serialisation makes (tested), with
    one copy of the frames instead of upb's several."""
    pieces = []
    for jpeg in frames_jpeg:
        value = _field_header(1, len(jpeg))                             # BytesList.value
        bytes_list = _field_header(1, len(value) + len(jpeg)) + value   # Feature.bytes_list
        pieces += [_field_header(1, len(bytes_list) + len(jpeg)) + bytes_list, jpeg]
    key = _field_header(1, len(FRAMES_KEY)) + FRAMES_KEY.encode()       # map entry's key
    feature_list_len = sum(map(len, pieces))
    entry = key + _field_header(2, feature_list_len)                    # map entry's value
    feature_lists = _field_header(1, len(entry) + feature_list_len) + entry
    head = _field_header(2, len(feature_lists) + feature_list_len) + feature_lists
    return b"".join([head] + pieces)


def sequence_example(frames_jpeg: Sequence[bytes], *, label: int, text: str, filename: str,
                     start_us: int, end_us: int, fps: float) -> bytes:
    """One serialized SequenceExample holding a video's JPEG frames and its context; the same
    bytes in every process."""
    ex = tf.train.SequenceExample()
    ctx = ex.context.feature
    ctx[LABEL_KEY].int64_list.value.append(int(label))
    ctx[TEXT_KEY].bytes_list.value.append(text.encode())
    ctx[FILENAME_KEY].bytes_list.value.append(filename.encode())
    ctx[START_KEY].int64_list.value.append(int(start_us))
    ctx[END_KEY].int64_list.value.append(int(end_us))
    ctx[FPS_KEY].float_list.value.append(float(fps))
    ctx[NUM_FRAMES_KEY].int64_list.value.append(len(frames_jpeg))
    # Deterministic: map fields (the context) otherwise serialise in a per-process order.
    # Field 1 (context) then field 2 (the frames), as protobuf orders them.
    return ex.SerializeToString(deterministic=True) + _frames_field(frames_jpeg)


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
