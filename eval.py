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
import re
import sys

if __name__ == "__main__":   # before the heavy imports: re-runs itself once (see startup)
    from tadax import startup
    startup.prepare()

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from tadax import checkpoint_io, explain, startup
from tadax.features import clip_data_config
from tadax.data import annotations, pipeline
from tadax.data.video import load_views
from tadax.errors import ConfigError, RunDirectoryError
from tadax.labels import shipped_class_names
from tadax.train import cli, evaluation, preflight, run_config
from tadax.paths import local_copy, user_path
from tadax.train.sharding import global_batch, make_mesh
from tadax.train.steps import make_eval_step

_HERE = os.path.dirname(os.path.abspath(__file__))


def _checkpoint_arg(argv) -> str:
    """The --checkpoint value on the command line ('' if absent): the default config is
    the checkpoint's own, and config_flags loads a default when the flag is defined."""
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--?checkpoint(=(.*))?", arg)
        if match:
            return match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else "")
    return ""


def _config_given(argv) -> bool:
    return any(re.fullmatch(r"--?config(=.*)?", a) for a in argv)


def _default_config(argv) -> str:
    """The checkpoint's own config, unless --config replaces it (then it is not read)."""
    return os.path.join(_HERE, "configs", "checkpoint.py") + ":" + (
        "" if _config_given(argv) else _checkpoint_arg(argv))


def exit_on_damaged_run_config(argv) -> None:
    """Without --config the default config of a run is its config.json, read when the
    config flag is defined (before `main`): a damaged one is reported here, in one line."""
    checkpoint = _checkpoint_arg(argv)
    if (not checkpoint or _config_given(argv) or checkpoint_io.is_model_dir(checkpoint)
            or run_config.run_dir_of(checkpoint) is None):
        return
    try:
        run_config.read_run_config(checkpoint)
    except RunDirectoryError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    exit_on_damaged_run_config(sys.argv)
config_flags.DEFINE_config_file(
    "config", _default_config(sys.argv),
    "Config (data, eval and mesh settings; the model too for run checkpoints); default: the "
    "checkpoint's own (configs/checkpoint.py).", lock_config=True)
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
FLAGS = flags.FLAGS


def check_config_source() -> None:
    """Without --config the checkpoint must carry its config (a converted directory or a
    run with its saved config.json)."""
    if _config_given(sys.argv):
        return
    if not checkpoint_io.is_model_dir(FLAGS.checkpoint) and \
            run_config.run_dir_of(FLAGS.checkpoint) is None:
        raise ConfigError(f"--checkpoint={FLAGS.checkpoint} is neither a converted model "
                          f"directory nor a training run with a saved {run_config.CONFIG_FILE}: "
                          "pass the recipe with --config")


def class_names(num_classes, data_cfg, from_dataset: bool):
    """`--labels`, else the evaluated dataset's `classes.txt` (`from_dataset`), else the
    names shipped for `data_cfg.dataset` (Kinetics-400), else None."""
    names = None
    if FLAGS.labels:
        source, names = f"--labels={FLAGS.labels}", annotations.read_classes(FLAGS.labels)
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
    cli.quiet_output()   # keep Orbax's info lines out of the output
    startup.on_ctrl_c("interrupted (Ctrl-C): eval.py stopped; no report was written")
    cli.initialize_distributed()
    check_config_source()
    config = FLAGS.config
    mesh = make_mesh(config.mesh)
    model, variables, model_cfg = evaluation.load_model(FLAGS.checkpoint, config, mesh,
                                                         use_ema=FLAGS.ema)
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
    app.run(main)
