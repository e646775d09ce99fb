"""The on-disk layout of prepared data, shared by its writer (`tadax.prepare`) and its reader.

DMVR-layout `tf.train.SequenceExample` records: context `clip/label/index`
(int64), `clip/label/text`, `video/filename`, `clip/start/timestamp` /
`clip/end/timestamp` (microseconds), and ours: `video/fps` (float) and
`video/num_frames` (int64); feature list `image/encoded`, one JPEG per frame.
Shards are `NAME-00000-of-00128`; `META_DIR` beside them holds each shard's
bookkeeping (`_meta/NAME-00000-of-00128.json`: its record count). Imports
nothing heavy: preparation's worker processes use it without TensorFlow.
"""

FRAMES_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"
START_KEY = "clip/start/timestamp"
END_KEY = "clip/end/timestamp"
FPS_KEY = "video/fps"
NUM_FRAMES_KEY = "video/num_frames"

META_DIR = "_meta"


def shard_name(name: str, index: int, count: int) -> str:
    """`NAME-00003-of-00128`."""
    return f"{name}-{index:05d}-of-{count:05d}"
