"""The fields every run config has; recipes fill in their numbers.

Optimizer rules per model family are in `configs/rules.py`.
"""

from typing import Optional

import ml_collections

from configs import rules
from tadax.data.config import data_config, recipe_overrides
from tadax.models import default_model_config


def base_config(*, name: str, arch: str, dataset: str, num_classes: int, frames: int,
                epochs: float, warmup_epochs: float, base_lr: float, weight_decay: float,
                schedule: str, warmup_start_lr: float, end_lr: float = 1e-6,
                label_smoothing: float, drop_path: float, image_size: int = 224,
                model_overrides: Optional[dict] = None,
                data_overrides: Optional[dict] = None) -> ml_collections.ConfigDict:
    """A complete run config; the family's optimizer rules are added by the caller."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.seed = 0
    c.workdir = f"workdirs/{name}"
    c.model = default_model_config(arch, num_classes=num_classes, num_frames=frames,
                                   image_size=image_size, dropout_rate=0.5,
                                   drop_path_rate=drop_path, **(model_overrides or {}))
    c.data = data_config(**dict(dataset=dataset, num_frames=frames,
                                **(data_overrides or {})))
    c.init = ml_collections.ConfigDict(dict(
        checkpoint="",        # converted starting point or any tadax checkpoint
        fresh=r"^$",          # regex of parameters kept at their fresh init (e.g. 'head/')
        start_from="",        # what the recipe fine-tunes from ('' = trained from scratch);
                              # a new run of such a recipe needs `checkpoint` ...
        from_scratch=False,   # ... unless this says to train from scratch anyway
    ))

    c.train = ml_collections.ConfigDict(dict(
        global_batch_size=256,
        grad_accum_steps=1,   # micro-batches per step: global batch / accum per forward pass
        epochs=float(epochs),   # also the length of the lr schedule (float: 0.5 is allowed)
        steps_per_epoch=0,    # 0: from the dataset size; the epoch count drives the schedule
        label_smoothing=label_smoothing,
        ema_decay=0.0,        # > 0 keeps an EMA of the weights (the original's MODEL.EMA: 0.99996)
        log_every_steps=20,
    ))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", base_lr=base_lr, end_lr=end_lr, schedule=schedule,
        cosine_after_warmup=True, warmup_epochs=float(warmup_epochs),
        warmup_start_lr=warmup_start_lr, weight_decay=weight_decay,
        b1=0.9, b2=0.999, eps=1e-8))

    _add_device_blocks(c)
    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=1000, every_secs=1800.0, keep=2, keep_best=1, best_metric="val/top1",
    ))
    return c


def _add_device_blocks(c: ml_collections.ConfigDict) -> None:
    """The blocks training and evaluation share: `mesh`, `sharding`, `eval`."""
    c.mesh = ml_collections.ConfigDict(dict(
        fsdp=1,               # devices each large matrix is split over; -1: all devices
    ))
    c.sharding = ml_collections.ConfigDict(dict(
        # (regex on the train-state path, 'fsdp' | 'replicate'), first match wins.
        # 'fsdp' splits the largest axis divisible by the fsdp size of arrays
        # with at least `fsdp_min_size` elements; the rest is replicated.
        rules=[(r"batch_stats", "replicate"), (r".*", "fsdp")],
        fsdp_min_size=2 ** 16,
    ))
    c.eval = ml_collections.ConfigDict(dict(
        every_steps=0,        # 0: once per epoch; single view, on `val_split`
        val_split="val",
        test_split="val",     # the final multi-view evaluation
        batch_size=64,
        final_multi_view=True,
        use_ema=False,
        explain_top_k=5,      # classes per bar chart of `eval.py --video ... --explain DIR`
    ))
    c.features = ml_collections.ConfigDict(dict(
        # `python -m tadax.features`: video embeddings written to .npz shards.
        videos_per_shard=1000,
        aggregate="mean",     # a video's views: 'mean' of their features, or 'all' (kept apart)
        pre_pool=False,       # also write the features before pooling (large: tokens / maps)
        decode_workers=4,     # video files decoded in parallel (folder input)
    ))


def model_eval_config(name: str, model: ml_collections.ConfigDict,
                      data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """What eval.py reads (name, model, data, mesh, sharding, eval) for a model without a
    run config, e.g. a converted release."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.model = model
    c.data = data
    _add_device_blocks(c)
    return c


def parse_arg(arg: str, **defaults) -> dict:
    """`'frames=32,dataset=ssv2'` (the part after ':' in --config) -> dict over `defaults`.

    Values are converted to the type of the default; unknown keys are an error.
    """
    out = dict(defaults)
    for item in filter(None, arg.split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        out[key] = type(defaults[key])(value)
    return out


def tadaformer_recipe(*, name: str, arch: str, dataset: str, num_classes: int, frames: int,
                      base_lr: float, epochs: float, warmup_epochs: float,
                      warmup_start_lr: float, layer_decay: float, batch: int,
                      start_from: str, drop_path: float = 0.0,
                      ssv2: bool = False) -> ml_collections.ConfigDict:
    """A TAdaFormer fine-tuning recipe from CLIP (AdamW, cosine_v2 after warmup, wd 0.05,
    label smoothing 0.1, layer-wise lr decay). `start_from`: the starting point a new run
    needs (`init.start_from`), with the command that makes it."""
    c = base_config(
        name=name, arch=arch, dataset=dataset, num_classes=num_classes, frames=frames,
        epochs=epochs, warmup_epochs=warmup_epochs, base_lr=base_lr, weight_decay=0.05,
        schedule="cosine_v2", warmup_start_lr=warmup_start_lr, end_lr=1e-6,
        label_smoothing=0.1, drop_path=drop_path,
        model_overrides=dict(temp_enhance=True, double_tada=True) if ssv2 else None)
    c.data.update(recipe_overrides("tadaformer", dataset))
    c.init.start_from = start_from
    rules.tadaformer_rules(c.optimizer, depth=c.model.depth, layer_decay=layer_decay)
    c.train.global_batch_size = batch
    return c


def convnext_recipe(*, name: str, arch: str, dataset: str, num_classes: int, frames: int,
                    base_lr: float, epochs: float, warmup_epochs: float, batch: int,
                    drop_path: float, start_from: str) -> ml_collections.ConfigDict:
    """A TAdaConvNeXtV2 recipe (AdamW, cosine with warmup from 1e-6, wd 0.02, no label
    smoothing, the legacy parameter groups). `start_from`: as in `tadaformer_recipe`."""
    c = base_config(
        name=name, arch=arch, dataset=dataset, num_classes=num_classes, frames=frames,
        epochs=epochs, warmup_epochs=warmup_epochs, base_lr=base_lr, weight_decay=0.02,
        schedule="cosine", warmup_start_lr=1e-6, label_smoothing=0.0, drop_path=drop_path)
    c.data.update(recipe_overrides("convnext", dataset))
    c.init.start_from = start_from
    rules.convnext_rules(c.optimizer)
    c.train.global_batch_size = batch
    return c
