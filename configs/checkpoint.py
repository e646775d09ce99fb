"""The evaluation config of a checkpoint: what it was trained or released with.

  python eval.py --checkpoint RUN_OR_MODEL_DIR        # eval.py's default config
  python eval.py --config configs/checkpoint.py:RUN_OR_MODEL_DIR --config.data.data_dir=...

A training run (its directory, `checkpoints/` or a step): the config the
trainer saved in the run directory (`config.json`), data settings included.
A converted model directory: its stored model config, with the original's
preprocessing and views for the model's family and dataset (told by its class
count: 400 Kinetics-400, 174 SSv2, ...; `released_model_data_config`).
Anything else (no checkpoint, or one without a saved config): the quick
start's config, which eval.py refuses to use unless `--config` is given.
"""

from configs import common, quickstart
from tadax import checkpoint_io
from tadax.data.config import released_model_data_config
from tadax.train import run_config


def get_config(checkpoint: str = ""):
    if checkpoint and checkpoint_io.is_model_dir(checkpoint):
        model = checkpoint_io.read_model_config(checkpoint)
        return common.model_eval_config(model.arch, model, released_model_data_config(model))
    if checkpoint and run_config.run_dir_of(checkpoint) is not None:
        return run_config.read_run_config(checkpoint)
    return quickstart.get_config()
