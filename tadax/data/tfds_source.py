"""Reading what the TFDS builders (`tadax.prepare.tfds_builders`) wrote, for the input pipeline.

A prepared builder is a folder `DATA_DIR/NAME/CONFIG/VERSION` of TFRecord shards
of `tf.train.Example`s (`video`: the JPEG frames as one bytes list, `label`,
`filename`, `fps`, `num_frames`) plus `dataset_info.json` with the records per
shard and `classes.txt`. The pipeline reads these shards with the same
sampling, augmentation and evaluation views as the DMVR shards of
`python -m tadax.prepare`: `parse` gives the dict `records.parse` gives, frames
still JPEG-encoded. A prepared builder is read from its files: the builders' code
(preparation) is not imported.
"""

from typing import Dict, Optional

import tensorflow as tf


def _prepared(name: str, data_dir: Optional[str]):
    """The prepared TFDS dataset `name` in `data_dir` (from its files where its builder is
    not registered in this process); FileNotFoundError if it is not prepared there."""
    import tensorflow_datasets as tfds

    todo = ("run the builder's download_and_prepare (docs/data.md, 'TFDS builders') or set "
            "data.data_dir")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise FileNotFoundError(f"data.tfds_name={name!r} is not prepared in {data_dir!r} "
                                f"({str(e).splitlines()[0]}): {todo}") from e
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"data.tfds_name={name!r} is not prepared in {str(builder.data_dir)!r}: {todo}")
    return builder


def builder_dir(name: str, data_dir: Optional[str]) -> str:
    """The folder of prepared builder `name` (e.g. 'kinetics400/short320') under TFDS
    `data_dir` (None: TFDS's default); raises FileNotFoundError if it is not prepared."""
    return str(_prepared(name, data_dir).data_dir)


def split_shards(name: str, data_dir: Optional[str], split: str) -> Dict[str, int]:
    """{shard path: number of records} of `split` of prepared builder `name`, in shard order."""
    builder = _prepared(name, data_dir)
    splits = builder.info.splits
    if split not in splits:
        raise FileNotFoundError(f"TFDS dataset {name!r} in {builder.data_dir!r} has no split "
                                f"{split!r}; it has {sorted(splits.keys())} (set "
                                "data.train_split / data.val_split)")
    info = splits[split]
    return {str(path): int(n) for path, n in zip(info.filepaths, info.shard_lengths)}


def parse(serialized):
    """One serialized builder example -> dict: `frames` (N,) JPEG strings, `label` int32,
    `fps` float32, `num_frames` int32, `filename` string (as `records.parse`)."""
    ex = tf.io.parse_single_example(serialized, {
        "video": tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "filename": tf.io.FixedLenFeature([], tf.string),
        "fps": tf.io.FixedLenFeature([], tf.float32),
    })
    frames = ex["video"]
    return {"frames": frames, "label": tf.cast(ex["label"], tf.int32), "fps": ex["fps"],
            "num_frames": tf.shape(frames)[0], "filename": ex["filename"]}
