"""Evaluate a checkpoint with the original's multi-view protocol, or classify one video.

  # a dataset split, multi-view (the recipe's clips x crops), with a report
  python eval.py --config configs/tadaformer_b16.py --checkpoint ckpt/tadaformer_b16_k400 \
      --config.data.data_dir=/data/k400 --output eval/b16_k400
  # one video file: the top-5 classes
  python eval.py --video clip.mp4 --config configs/tadaformer_b16.py \
      --checkpoint ckpt/tadaformer_b16_k400 --labels ../shared/data/kinetics400_classes.txt

`--checkpoint` is a converted model directory (`python -m tadax.convert`) or
a training run (its directory, `checkpoints/` or one step). The model is the
one stored with a converted directory, else the config's. For `--video`, the
clip length and crop follow the model and the sampling and normalisation the
config: pass the model's recipe. The report (`--output`): metrics.json (top-1/top-5 video and view level, per-class
accuracy), predictions.jsonl, confusion.png. Every path may be local or gs://.
"""

import os

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from tadax.data import annotations, pipeline
from tadax.data.video import load_views
from tadax.paths import local_copy, user_path
from tadax.train import cli, evaluation
from tadax.train.sharding import global_batch, make_mesh
from tadax.train.steps import make_eval_step

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file(
    "config", os.path.join(_HERE, "configs", "quickstart.py"),
    "Recipe config (data, eval and mesh settings; the model too for run checkpoints).",
    lock_config=True)
flags.DEFINE_string("checkpoint", None, "Converted model directory or training run.",
                    required=True)
flags.DEFINE_string("output", None, "Report directory; default: CHECKPOINT/eval.")
flags.DEFINE_string("split", None, "Split to evaluate; default: config.eval.test_split.")
flags.DEFINE_bool("single_view", False, "One view per video instead of the multi-view protocol.")
flags.DEFINE_bool("ema", False, "Use the EMA weights of a run checkpoint.")
flags.DEFINE_string("video", None, "Classify this one video file instead of a dataset split.")
flags.DEFINE_string("labels", None, "Class names, one a line in label order.")
FLAGS = flags.FLAGS


def class_names(num_classes, data_cfg=None):
    """`--labels`, else the evaluated dataset's `classes.txt` (with `data_cfg`), else None."""
    if FLAGS.labels:
        source, names = FLAGS.labels, annotations.read_classes(FLAGS.labels)
    else:
        source = "the dataset's classes.txt"
        names = pipeline.dataset_class_names(data_cfg) if data_cfg is not None else None
        if names is None:
            return None
    if len(names) != num_classes:
        raise ValueError(f"{source} has {len(names)} names; the model has {num_classes} classes")
    return names


def video_data_config(config, model_cfg):
    """The recipe's data settings with the clip length and crop of the loaded model."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.num_frames = model_cfg.num_frames
    if data.test_crop_size < model_cfg.image_size or model_cfg.family == "tadaformer":
        data.test_crop_size = model_cfg.image_size
        data.test_scale = max(data.test_scale, model_cfg.image_size)
    return data


def classify_video(config, mesh, model, variables, model_cfg) -> None:
    """Prints the top-5 classes of `--video` (softmax scores averaged over its views)."""
    with local_copy(FLAGS.video) as video:
        views = load_views(video, video_data_config(config, model_cfg),
                           multi_view=not FLAGS.single_view).astype(np.float32)
    n = len(views)
    pad = (-n) % jax.device_count()
    batch = np.concatenate([views, np.zeros((pad,) + views.shape[1:], views.dtype)])
    step = make_eval_step(model, mesh, jax.tree_util.tree_map(lambda a: a.sharding, variables))
    probs = np.asarray(step(variables, global_batch({"video": batch}, mesh)["video"]))[:n]
    scores = probs.sum(0) / n
    names = class_names(model_cfg.num_classes)
    print(f"{FLAGS.video}: {n} views")
    for c in np.argsort(-scores)[:5]:
        label = names[c] if names else str(c)
        print(f"  {scores[c]:.4f}  {label}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)   # keep Orbax's info lines out of the output
    cli.initialize_distributed()
    config = FLAGS.config
    mesh = make_mesh(config.mesh)
    model, variables, model_cfg = evaluation.load_model(FLAGS.checkpoint, config, mesh,
                                                         use_ema=FLAGS.ema)
    if FLAGS.video:
        classify_video(config, mesh, model, variables, model_cfg)
        return
    step = make_eval_step(model, mesh, jax.tree_util.tree_map(lambda a: a.sharding, variables))
    split = FLAGS.split or config.eval.test_split
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
                                class_names(model_cfg.num_classes, config.data))
        print(f"\n{split}: top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  "
              f"(views: {result['view_top1']:.2f} / {result['view_top5']:.2f}) over "
              f"{result['num_videos']} videos, {result['num_views']} views -> {output}")


if __name__ == "__main__":
    app.run(main)
