"""Evaluate a checkpoint with the original's multi-view protocol, or classify one video.

  # a training run: its own saved config (model, data, views), the val split
  python eval.py --checkpoint workdirs/quickstart
  # a converted release: the original's preprocessing and views for its family and dataset
  python eval.py --checkpoint ckpt/tadaformer_b16_k400 --config.data.data_dir=/data/k400 \
      --output eval/b16_k400
  # one video file: the top-5 classes (Kinetics-400 names ship with the package)
  python eval.py --video clip.mp4 --checkpoint ckpt/tadaformer_b16_k400
  # ... and PNGs of the scores per view and the temporal calibration (tadax/explain.py)
  python eval.py --video clip.mp4 --checkpoint ckpt/tadaformer_b16_k400 --explain out/
  # a long video as a timeline: the clip slid over it, top-5 per window (tadax/timeline.py)
  python eval.py --video long.mp4 --checkpoint ckpt/tadaformer_b16_k400 --timeline out/ \
      --window 300 --stride 75 --fps 30

`--checkpoint` is a converted model directory (`python -m tadax.convert`) or
a training run (its directory, `checkpoints/` or one step). Without
`--config` the config is the checkpoint's own (`configs/checkpoint.py`): the
run's saved `config.json`, or for a converted directory its stored model
with the recipe's data settings; `--config.x.y=v` overrides it. `--config`
replaces it (the model of a converted directory is still the stored one).
The report (`--output`): metrics.json (top-1/top-5 video and view level,
per-class accuracy), predictions.jsonl, confusion.png. Every path may be local or gs://.
"""

import os
import sys

if __name__ == "__main__":   # before the heavy imports: re-runs itself once (see startup)
    from tadax import startup
    startup.prepare()

import jax
import numpy as np
from absl import app, flags

from tadax import explain, startup, timeline
from tadax.features.extract import clip_data_config
from tadax.data import class_list, pipeline, windows
from tadax.data.video import load_views
from tadax.errors import ConfigError, RunDirectoryError
from tadax.labels import shipped_class_names
from tadax.train import cli, evaluation, preflight
from tadax.paths import local_copy, user_path
from tadax.train.sharding import global_batch, make_mesh
from tadax.train.steps import make_eval_step

_HERE = os.path.dirname(os.path.abspath(__file__))


if __name__ == "__main__":
    cli.exit_on_damaged_run_config(sys.argv)
cli.define_config(
    cli.default_config(_HERE, sys.argv),
    "Config (data, eval and mesh settings; the model too for run checkpoints); default: the "
    "checkpoint's own (configs/checkpoint.py).")
flags.DEFINE_string("checkpoint", None, "Converted model directory or training run.",
                    required=True)
flags.DEFINE_string("output", None, "Report directory; default: CHECKPOINT/eval.")
flags.DEFINE_string("split", None, "Split to evaluate; default: config.eval.test_split.")
flags.DEFINE_bool("single_view", False, "One view per video instead of the multi-view protocol.")
flags.DEFINE_bool("ema", False, "Use the EMA weights of a run checkpoint.")
flags.DEFINE_string("video", None, "Classify this one video file instead of a dataset split.")
flags.DEFINE_string("labels", None, "Class names, one a line in label order.")
flags.DEFINE_string("explain", None, "With --video: write the scores of each view and the "
                    "TAdaConv calibration over time and depth (PNGs + arrays) to this folder.")
flags.DEFINE_string("timeline", None, "With --video: slide the model's clip over the whole "
                    "video and write per-window top-5 (JSON), a PNG of class probability over "
                    "time and the arrays to this folder; print its segments.")
flags.DEFINE_integer("window", None, "--timeline: frames per window (at the video's rate, or "
                     "--fps); default: the span of the recipe's clip (interval sampling).")
flags.DEFINE_integer("stride", None, "--timeline: frames between window starts; default: a "
                     "quarter of the window.")
flags.DEFINE_float("fps", None, "--timeline: count frames at this rate (the video resampled); "
                   "default: the recipe's target rate, else the video's own.")
FLAGS = flags.FLAGS


def class_names(num_classes, data_cfg, from_dataset: bool):
    """`--labels`, else the evaluated dataset's `classes.txt` (`from_dataset`), else the
    names shipped for `data_cfg.dataset` (Kinetics-400), else None."""
    names = None
    if FLAGS.labels:
        source, names = f"--labels={FLAGS.labels}", class_list.read_classes(FLAGS.labels)
    elif from_dataset:
        source, names = "the dataset's classes.txt", pipeline.dataset_class_names(data_cfg)
    if names is None:
        source, names = f"the {data_cfg.dataset} class list", shipped_class_names(data_cfg.dataset)
        if names is None or len(names) != num_classes:
            return None
    if len(names) != num_classes:
        raise ConfigError(f"{source} has {len(names)} names; the model has {num_classes} classes")
    return names


def video_views(config, model_cfg) -> np.ndarray:
    """The evaluation views of `--video`, `(V, T, H, W, 3)` float32, with the recipe's data
    settings at the clip length and crop of the loaded model."""
    with local_copy(FLAGS.video) as video:
        return load_views(video, clip_data_config(config.data, model_cfg),
                          multi_view=not FLAGS.single_view).astype(np.float32)


def video_timeline(config, mesh, model, variables, model_cfg) -> None:
    """Writes the timeline of `--video` to `--timeline` and prints its segments."""
    data_cfg = clip_data_config(config.data, model_cfg)
    try:
        spec = windows.window_spec(data_cfg, model_cfg.num_frames, FLAGS.window, FLAGS.stride,
                                   FLAGS.fps)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    step = make_eval_step(model, mesh, jax.tree_util.tree_map(lambda a: a.sharding, variables))
    batch = -(-config.eval.batch_size // jax.device_count()) * jax.device_count()

    def predict(video: np.ndarray) -> np.ndarray:
        return np.asarray(step(variables, global_batch({"video": video}, mesh)["video"]))

    timeline.run_timeline(
        FLAGS.video, spec, data_cfg, predict, batch, FLAGS.timeline,
        class_names=class_names(model_cfg.num_classes, config.data, from_dataset=False),
        settings={"checkpoint": str(user_path(FLAGS.checkpoint))})


def classify_video(config, mesh, model, variables, model_cfg, views: np.ndarray) -> None:
    """Prints the top-5 classes of `--video` (softmax scores averaged over its `views`)."""
    n = len(views)
    pad = (-n) % jax.device_count()
    batch = np.concatenate([views, np.zeros((pad,) + views.shape[1:], views.dtype)])
    step = make_eval_step(model, mesh, jax.tree_util.tree_map(lambda a: a.sharding, variables))
    probs = np.asarray(step(variables, global_batch({"video": batch}, mesh)["video"]))[:n]
    scores = probs.sum(0) / n
    names = class_names(model_cfg.num_classes, config.data, from_dataset=False)
    print(f"{FLAGS.video}: {n} views")
    for c in np.argsort(-scores)[:5]:
        label = names[c] if names else str(c)
        print(f"  {scores[c]:.4f}  {label}")


@cli.one_line_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.explain and not FLAGS.video:
        raise ConfigError("--explain needs --video (it explains one video)")
    if FLAGS.timeline and not FLAGS.video:
        raise ConfigError("--timeline needs --video (the long video to slide the clip over)")
    if FLAGS.timeline and FLAGS.explain:
        raise ConfigError("--timeline and --explain: give one (the timeline already shows the "
                          "scores over time; --explain the views of one clip)")
    for name in ("window", "stride", "fps"):
        if FLAGS[name].present and not FLAGS.timeline:
            raise ConfigError(f"--{name} sets the windows of --timeline, which is not given")
    cli.quiet_output()   # keep Orbax's info lines out of the output
    startup.on_ctrl_c("interrupted (Ctrl-C): eval.py stopped; no report was written")
    cli.initialize_distributed()
    cli.check_config_source(FLAGS.checkpoint, sys.argv)
    config = FLAGS.config
    mesh = make_mesh(config.mesh)
    model, variables, model_cfg = evaluation.load_model(FLAGS.checkpoint, config, mesh,
                                                         use_ema=FLAGS.ema)
    if FLAGS.timeline:
        video_timeline(config, mesh, model, variables, model_cfg)
        return
    if FLAGS.video:
        views = video_views(config, model_cfg)
        classify_video(config, mesh, model, variables, model_cfg, views)
        if FLAGS.explain:
            explain.explain_video(
                FLAGS.video, views, 1 if FLAGS.single_view else config.data.num_crops, model,
                variables, FLAGS.explain, top_k=config.eval.explain_top_k,
                class_names=class_names(model_cfg.num_classes, config.data, from_dataset=False))
            print(f"explanation -> {FLAGS.explain}")
        return
    step = make_eval_step(model, mesh, jax.tree_util.tree_map(lambda a: a.sharding, variables))
    split = FLAGS.split or config.eval.test_split
    preflight.check_data(config.data, split)
    reads = pipeline.host_eval_reads(config.data, split, jax.process_index(), jax.process_count())
    if len(reads.videos):
        print(f"host {jax.process_index()}/{jax.process_count()} evaluates videos "
              f"{reads.videos[0]}-{reads.videos[-1]} from {len(reads.files)} shard files",
              flush=True)
    batches = pipeline.build_eval_iterator(
        config.data, split=split, global_batch_size=config.eval.batch_size,
        multi_view=not FLAGS.single_view, process_index=jax.process_index(),
        process_count=jax.process_count())
    views = evaluation.run_views(
        step, variables, batches, mesh,
        progress=lambda i: print(f"\r{i} batches", end="", flush=True) if i % 10 == 0 else None)
    videos = evaluation.aggregate_views(views["probs"], views["label"], views["video_id"])
    result = evaluation.metrics(views, videos)
    result.update(checkpoint=str(user_path(FLAGS.checkpoint)), split=split,
                  multi_view=not FLAGS.single_view)
    output = user_path(FLAGS.output) if FLAGS.output else user_path(FLAGS.checkpoint) / "eval"
    if jax.process_index() == 0:
        evaluation.write_report(output, views, videos, result,
                                class_names(model_cfg.num_classes, config.data, from_dataset=True))
        if "top1" not in result:
            print(f"\n{split}: unlabelled split, predictions only for {result['num_videos']} "
                  f"videos, {result['num_views']} views -> {output}/predictions.jsonl")
            return
        print(f"\n{split}: top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  "
              f"(views: {result['view_top1']:.2f} / {result['view_top5']:.2f}) over "
              f"{result['num_videos'] - result['num_unlabelled']} labelled videos, "
              f"{result['num_views']} views -> {output}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
