"""`python -m tadax.finetune`: fine-tune a checkpoint on your own videos, or probe it.

  python -m tadax.finetune --videos DIR --checkpoint CKPT --workdir W
  python -m tadax.finetune --csv videos.csv --checkpoint CKPT --workdir W --linear-probe

DIR holds one folder per class (`DIR/CLASS/*.mp4`), or `--csv` lists `path,label`
lines (paths relative to `--videos` when given, else to the CSV's folder). The command
splits the videos (seeded, stratified; `W/split/`), prepares them (`W/data/`), and
either fine-tunes the checkpoint with a fresh head (`W/finetune/`, a training run) or,
with `--linear-probe`, trains a linear classifier on the frozen backbone's features
(`W/linear_probe/`); both end with the multi-view evaluation of the val videos and
`report.md` (per-class accuracy, class names, the confusion matrix PNG beside it).
The config is `configs/finetune.py:CKPT`, the checkpoint's recipe adapted; every
field can be overridden (`--config.train.epochs=10`) and each choice is printed.
Rerunning the command resumes it. Every path may be gs://.
"""

import os
import sys

if __name__ == "__main__":   # before the heavy imports: re-runs itself once (see host_memory)
    from tadax import host_memory, startup
    host_memory.reexec_with_huge_pages()
    startup.import_tensorflow_quietly()

from absl import app, flags, logging
from ml_collections import config_flags

from tadax.errors import ConfigError
from tadax.train import cli, preemption

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")
FINETUNE_CONFIG = os.path.join(_CONFIGS, "finetune.py")

config_flags.DEFINE_config_file(
    "config", FINETUNE_CONFIG + ":" + cli.checkpoint_arg(sys.argv),
    "Fine-tune config; default: the checkpoint's recipe adapted (configs/finetune.py).",
    lock_config=True)
flags.DEFINE_string("videos", None, "Folder of the videos, one sub-folder per class (or the "
                    "folder --csv's paths are relative to).")
flags.DEFINE_string("csv", None, "A `path,label` CSV of the videos instead of class folders.")
flags.DEFINE_string("checkpoint", None, "Converted model directory or training run.")
flags.DEFINE_string("workdir", None, "Work directory: split, prepared data, run, report.")
flags.DEFINE_bool("linear-probe", False, "Train a linear classifier on the frozen backbone's "
                  "features instead of fine-tuning.")
FLAGS = flags.FLAGS


def _print_notes(notes) -> None:
    for field, value, why in notes:
        print(f"  {field}" + (f" = {value}" if value else "") + f": {why}", flush=True)


@cli.one_line_errors
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from tadax.finetune import report, workflow
    from tadax.paths import user_path

    checkpoint = FLAGS.checkpoint or ""
    workflow.check_checkpoint(checkpoint)
    if not FLAGS.workdir:
        raise ConfigError("--workdir is required: the folder for the split, the prepared "
                          "data, the run and the report")
    workdir = user_path(FLAGS.workdir)
    config = FLAGS.config
    given = dict(config_flags.get_override_values(FLAGS["config"]))
    probe = FLAGS["linear-probe"].value
    listing = workflow.list_videos(FLAGS.videos or "", FLAGS.csv or "")
    split = workflow.prepare(listing, workdir, config)
    names = list(listing.classes)
    title = ("Linear probe" if probe else "Fine-tune") + f": {workdir}"
    if probe:
        print(f"linear probe of {checkpoint}: features of every view of every video, once",
              flush=True)
        eval_dir, notes = workflow.run_probe(config, checkpoint, workdir)
        folder = eval_dir.parent
    else:
        from tadax.data import pipeline
        preset_notes = []
        if config_flags.get_config_filename(FLAGS["config"]).startswith(FINETUNE_CONFIG + ":"):
            from configs import finetune
            preset_notes = finetune.preset(checkpoint)[1]
        data = workdir / workflow.DATA_DIR
        num_train = pipeline.num_examples(_data_block(config, data), "train")
        config, notes, resuming = workflow.finetune_config(
            checkpoint, workdir, config, given, num_train, len(names), preset_notes)
        print(("resuming with the run's saved config; its choices:" if resuming else
               "fine-tune preset:"), flush=True)
        _print_notes(notes)
        try:
            folder = workflow.run_finetune(config, workdir).parent
        except preemption.Preempted as e:
            print(e, flush=True)
            sys.exit(preemption.EXIT_CODE)
    text = report.write(folder, title, checkpoint, split, names, notes)
    print(text, end="", flush=True)
    print(f"report: {folder / 'report.md'}", flush=True)


def _data_block(config, data_dir):
    import ml_collections
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.data_dir = str(data_dir)
    return data


if __name__ == "__main__":
    app.run(main)
