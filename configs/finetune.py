"""Fine-tuning a checkpoint on your own videos: its recipe, adapted (`python -m tadax.finetune`).

  python -m tadax.finetune --videos DIR --checkpoint CKPT --workdir W   # this config, for CKPT
  python -m tadax.finetune --videos DIR --checkpoint CKPT --workdir W --config.train.epochs=10

`get_config(CHECKPOINT)` starts from the recipe the checkpoint was made with: a training
run's saved config, or for a converted model the recipe in configs/ of its architecture
and dataset (174 classes: the SSv2 recipe, any other count: Kinetics-400's; the quick
start's architecture: configs/quickstart.py). It keeps the recipe's augmentation,
parameter groups, schedule, epochs, label smoothing, drop path and evaluation views, and
changes what fine-tuning needs (`preset` returns each change with its reason):

- init: the weights of CHECKPOINT, the head re-learnt (`init.fresh='^head/'`): the
  classes are yours;
- optimizer.base_lr: a tenth of the recipe's (the backbone is already trained on video;
  the head still learns at the recipe's head multiplier on top). A run that was itself
  a fine-tune keeps its rate;
- data.flip off where the recipe's flip swaps a dataset's own left/right classes (SSv2):
  your classes' pairs are unknown, and mirroring a left/right motion changes its label.

What depends on the data and the device is set by the command, each choice printed
(`tadax/finetune/preset.py`): the class count, the batch, the validation interval, and
`model.dtype` / `model.remat` / `train.grad_accum_steps` to fit the device's memory; a
field given on the command line (`--config.x.y=v`) is kept as given.
"""

import importlib
from typing import List, Tuple

import ml_collections

from configs import quickstart
from tadax import checkpoint_io
from tadax.paths import user_path
from tadax.train import run_config

# Fine-tuning changes the recipe's learning rate by this factor.
LR_FACTOR = 0.1
# The recipe of a converted model's architecture (its K400 recipe; `_ssv2` for 174 classes).
ZOO_RECIPES = ("tadaformer_b16", "tadaformer_l14", "tadaconvnextv2_tiny", "tadaconvnextv2_small",
               "tadaconvnextv2_base")
SSV2_CLASSES = 174
DATASET = "custom"


def _recipe(checkpoint: str) -> Tuple[ml_collections.ConfigDict, str]:
    """(the recipe config of `checkpoint`, what it is)."""
    if checkpoint and checkpoint_io.is_model_dir(checkpoint):
        model = checkpoint_io.read_model_config(checkpoint)
        if model.arch in ZOO_RECIPES:
            name = model.arch + ("_ssv2" if model.num_classes == SSV2_CLASSES else "")
            recipe = importlib.import_module(f"configs.{name}").get_config(
                f"frames={model.num_frames}")
        else:
            name, recipe = "quickstart", quickstart.get_config()
        stored = ml_collections.ConfigDict(model.to_dict())
        for key in ("dropout_rate", "drop_path_rate", "scan_layers"):
            stored[key] = recipe.model[key]
        recipe.model = stored
        recipe.data.num_frames = stored.num_frames
        if stored.family == "tadaformer":   # the position embedding fixes the frame size
            recipe.data.train_crop_size = recipe.data.test_crop_size = stored.image_size
            recipe.data.test_scale = max(recipe.data.test_scale, stored.image_size)
        return recipe, f"configs/{name}.py"
    if checkpoint and run_config.run_dir_of(checkpoint) is not None:
        return run_config.read_run_config(checkpoint), f"the run's {run_config.CONFIG_FILE}"
    return quickstart.get_config(), "configs/quickstart.py"


def preset(checkpoint: str = "") -> Tuple[ml_collections.ConfigDict, List[Tuple[str, str]]]:
    """(the fine-tune config of `checkpoint`, [(field, why it has its value)])."""
    c, source = _recipe(checkpoint)
    notes = [("recipe", f"{source}: its augmentation, parameter groups, schedule, "
                        f"{c.train.epochs:g} epochs, views")]
    was_finetune = "finetune" in c
    c.name = f"finetune_{c.model.arch}"
    c.init = ml_collections.ConfigDict(dict(checkpoint=str(user_path(checkpoint)) if checkpoint
                                            else "", fresh=r"^head/",
                                            start_from="", from_scratch=False))
    notes.append(("init.fresh", "the backbone from the checkpoint, a new head "
                                "for your classes"))
    if was_finetune:
        notes.append(("optimizer.base_lr", "the rate of the fine-tune run it continues"))
    else:
        recipe_lr = c.optimizer.base_lr
        c.optimizer.base_lr = recipe_lr * LR_FACTOR
        c.optimizer.warmup_start_lr = min(c.optimizer.warmup_start_lr, c.optimizer.base_lr)
        c.optimizer.end_lr = min(c.optimizer.end_lr, c.optimizer.base_lr)
        notes.append(("optimizer.base_lr", f"the recipe's {recipe_lr:g} x {LR_FACTOR:g}: the "
                                           "backbone is trained already; the head learns at "
                                           "the recipe's head multiplier on top"))
    if c.data.dataset in ("ssv2", "ssv1") and c.data.flip:
        c.data.flip = False
        notes.append(("data.flip", "off: the recipe's flip swaps SSv2's own left/right "
                                   "classes; --config.data.flip=True if mirroring keeps "
                                   "every label of yours"))
    elif c.data.flip:
        notes.append(("data.flip", "on, as the recipe: --config.data.flip=False if mirroring "
                                   "changes a label (left/right motions)"))
    c.data.dataset = DATASET
    c.data.data_dir = ""          # the command's prepared data: WORKDIR/data
    c.workdir = ""
    c.eval.val_split = c.eval.test_split = "val"
    c.eval.every_steps = 0
    c.finetune = ml_collections.ConfigDict(dict(
        val_fraction=0.2,     # share of each class's videos held out for validation (>= 1 each)
        split_seed=0,         # the train/val split is a function of this and the video list
        min_steps_per_epoch=8,   # the batch is the largest power of two giving this many
        validations=10,       # validations per run (at most one per epoch)
        device_memory_gib=0.0,   # 0: the device's own (CPU: the available host memory)
        short_side=320,       # frames are stored with at most this short side (0: as decoded)
        cache_dir="~/.cache/tadax/finetune",   # local copies of gs:// videos, for decoding
    ))
    c.probe = ml_collections.ConfigDict(dict(
        # --linear-probe: a softmax classifier on the frozen backbone's pooled features of
        # every view; its L2 weight is chosen among `l2` by cross-validation over the train
        # videos (`folds` folds).
        l2=(1e-4, 1e-3, 1e-2, 1e-1),
        folds=3,
        max_steps=500,        # L-BFGS iterations per fit
        tolerance=1e-6,       # ... or until the gradient's largest entry is below this
    ))
    return c, notes


def get_config(checkpoint: str = ""):
    return preset(checkpoint)[0]
