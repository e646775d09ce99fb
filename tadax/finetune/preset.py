"""The fine-tune config's choices that depend on your data and your device.

`configs/finetune.py` adapts the checkpoint's recipe; once the videos are prepared,
`fill_in` sets the class count, and, unless the command line gave them:

- the global batch: the largest power of two that still gives
  `finetune.min_steps_per_epoch` steps per epoch, at most the recipe's batch, and a
  multiple of the device count (a small set of videos gets a small batch rather than a
  few steps);
- the validation interval: `finetune.validations` per run, at most one per epoch;
- `model.dtype`, `model.remat`, `train.grad_accum_steps`: the fastest that fit the
  device's memory (`memory_plan`).

Each choice comes back as (field, value, why), for the command to print.
"""

import math
from typing import Callable, Collection, List, Tuple

import ml_collections

from tadax.finetune import memory_plan
from tadax.train import mixup

Note = Tuple[str, str, str]
# The fields `fill_in` chooses (or reports as given).
CHOSEN = ("model.num_classes", "train.global_batch_size", "eval.every_steps", "model.dtype",
          "model.remat", "train.grad_accum_steps")


def global_batch(num_train: int, recipe_batch: int, devices: int, min_steps: int) -> int:
    """The largest power of two <= num_train / min_steps, at most `recipe_batch`, made a
    multiple of `devices` (at least `devices`)."""
    target = max(1, min(recipe_batch, num_train // max(1, min_steps)))
    batch = 1 << (target.bit_length() - 1)
    return max(devices, batch - batch % devices)


def validation_interval(num_train: int, batch: int, epochs: float, validations: int) -> int:
    """Steps between validations: `validations` per run, at least an epoch apart."""
    epoch_steps = max(1, num_train // batch)
    total = max(1, int(round(epochs * epoch_steps)))
    return max(epoch_steps, math.ceil(total / max(1, validations)))


def fill_in(config: ml_collections.ConfigDict, *, num_train: int, num_classes: int,
            given: Collection[str], devices: int,
            estimate: Callable[[ml_collections.ConfigDict], int] = memory_plan.train_step_peak
            ) -> List[Note]:
    """Sets the data- and device-dependent fields of `config` in place (those in `given`,
    dotted names from the command line, are kept) and returns each choice."""
    notes: List[Note] = []
    config.model.num_classes = config.data.num_classes = num_classes
    notes.append(("model.num_classes", str(num_classes), "the class folders / labels"))
    if "train.global_batch_size" in given:
        notes.append(("train.global_batch_size", str(config.train.global_batch_size), "given"))
    else:
        recipe = config.train.global_batch_size
        config.train.global_batch_size = global_batch(
            num_train, recipe, devices, config.finetune.min_steps_per_epoch)
        notes.append(("train.global_batch_size", str(config.train.global_batch_size),
                      f"{num_train} train videos: at least {config.finetune.min_steps_per_epoch} "
                      f"steps per epoch, at most the recipe's {recipe}, a multiple of "
                      f"{devices} device(s)"))
    if "eval.every_steps" in given:
        notes.append(("eval.every_steps", str(config.eval.every_steps), "given"))
    else:
        config.eval.every_steps = validation_interval(
            num_train, config.train.global_batch_size, config.train.epochs,
            config.finetune.validations)
        notes.append(("eval.every_steps", str(config.eval.every_steps),
                      f"about {config.finetune.validations} validations in "
                      f"{config.train.epochs:g} epochs, at most one per epoch"))
    fields = {"model.dtype": "dtype", "model.remat": "remat",
              "train.grad_accum_steps": "grad_accum_steps"}
    fixed = {arg: _get(config, name) for name, arg in fields.items() if name in given}
    if len(fixed) == len(fields):
        notes.append((" / ".join(fields), " / ".join(str(_get(config, n)) for n in fields),
                      "given"))
        return notes
    budget, source = memory_plan.device_memory(config.finetune.device_memory_gib)
    plan = memory_plan.plan(
        config, budget * memory_plan.HEADROOM, devices=devices,
        min_micro_batch=2 if mixup.mixing_enabled(config.data) else 1, estimate=estimate,
        **fixed)
    config.model.dtype, config.model.remat = plan.dtype, plan.remat
    config.train.grad_accum_steps = plan.grad_accum_steps
    why = (f"{plan.describe()} ({memory_plan.HEADROOM:.0%} of "
           f"{budget / memory_plan.GIB:.3g} GiB, {source})"
           + (f"; given: {', '.join(n for n in fields if n in given)}" if fixed else ""))
    notes.append((" / ".join(fields), " / ".join(str(_get(config, n)) for n in fields), why))
    return notes


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node
