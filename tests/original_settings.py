"""What the original's training settings mean, written from its definitions (test helper).

The original reads a project YAML through its `_BASE_*` chain onto its global
`configs/pool/base.yaml`; `settings()` gives the result as flat dotted keys
(`OPTIMIZER.BASE_LR`). The functions below turn those keys into the values the
original's code actually uses: the learning rate at an epoch
(`lr_policy.get_lr_at_epoch`), each parameter's learning-rate multiplier and
weight decay (`optimizer.construct_optimizer`), the global batch
(`datasets/base/builder.py`) and the multi-view test (`runs/run.py`). They are
written from reading the original, not taken from tadax, so tadax's recipes can
be checked against them (`tests/test_recipes.py`, `tests/test_optim.py`).
"""

import math
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence, Tuple

from tadax.weights.upstream import load_upstream_settings

Settings = Mapping[str, Any]


def settings(yaml_path: Path, upstream_configs: Path) -> Dict[str, Any]:
    """A project YAML of the original with its `_BASE_*` chain, over `pool/base.yaml`.

    upstream_configs: the original's `configs/` folder (holding `pool/base.yaml`).
    """
    merged = load_upstream_settings(str(upstream_configs / "pool" / "base.yaml"))
    merged.update(load_upstream_settings(str(yaml_path)))
    return merged


def peak_lr(s: Settings) -> float:
    """The learning rate the schedule is built on: BASE_LR, scaled by the global batch / 256
    only for SGD and LARS with ADJUST_LR (the original never scales Adam/AdamW's)."""
    lr = float(s["OPTIMIZER.BASE_LR"])
    if s.get("OPTIMIZER.ADJUST_LR") and s["OPTIMIZER.OPTIM_METHOD"] in ("sgd", "lars"):
        lr *= s["NUM_GPUS"] * s["TRAIN.BATCH_SIZE"] / 256.0
    return lr


def lr_at_epoch(s: Settings, epoch: float) -> float:
    """The base learning rate at a (fractional) epoch: a linear warmup from WARMUP_START_LR
    to the policy's value at WARMUP_EPOCHS, then the policy ('cosine' or 'cosine_v2')."""
    if s["TRAIN.NUM_FOLDS"] != 1:
        raise ValueError("TRAIN.NUM_FOLDS != 1 (epochs in folds): not in the released recipes")
    base, total = peak_lr(s), float(s["OPTIMIZER.MAX_EPOCH"])
    warmup = float(s["OPTIMIZER.WARMUP_EPOCHS"])

    def policy(e: float) -> float:
        name = s["OPTIMIZER.LR_POLICY"]
        if name == "cosine":
            return base * (math.cos(math.pi * e / total) + 1.0) / 2.0
        if name == "cosine_v2":
            end = float(s["OPTIMIZER.COSINE_END_LR"])
            start = warmup if s["OPTIMIZER.COSINE_AFTER_WARMUP"] else 0.0
            return end + (base - end) * (math.cos(math.pi * (e - start) / (total - start))
                                         + 1.0) / 2.0
        raise ValueError(f"LR_POLICY {name!r}: not one the released recipes use")

    if epoch < warmup:
        first = float(s["OPTIMIZER.WARMUP_START_LR"])
        return first + epoch * (policy(warmup) - first) / warmup
    return policy(epoch)


def global_batch(s: Settings) -> int:
    """Clips per optimizer step: TRAIN.BATCH_SIZE is split over a machine's NUM_GPUS, and
    every one of the NUM_SHARDS machines loads as many."""
    return int(s["TRAIN.BATCH_SIZE"]) * int(s["NUM_SHARDS"])


def final_views(s: Settings) -> Tuple[int, int]:
    """(temporal clips, spatial crops) of the final test. With AUTOMATIC_MULTI_SCALE_TEST
    the run script follows the single-view test with a multi-view one whose views it picks
    by dataset; otherwise TEST.NUM_ENSEMBLE_VIEWS x TEST.NUM_SPATIAL_CROPS."""
    if not s["TEST.AUTOMATIC_MULTI_SCALE_TEST"]:
        return int(s["TEST.NUM_ENSEMBLE_VIEWS"]), int(s["TEST.NUM_SPATIAL_CROPS"])
    dataset = s["TEST.DATASET"]
    if "ssv2" in dataset:
        return 2, 3
    if "kinetics" in dataset:
        return 10, 3
    raise ValueError(f"TEST.DATASET {dataset!r}: not one the released recipes use")


def _vit_layer(name: str, depth: int) -> int:
    """Layer index (0 = embeddings, depth + 1 = after the last block) of a TAdaFormer
    parameter, as the original's layer-wise branch numbers them."""
    parts = name.split(".")
    if "embd" in name or "cls_token" in name or "embedding" in name:
        return 0
    if parts[0] != "backbone" or parts[1] in ("ln_post", "proj"):
        return depth + 1
    if parts[1] in ("conv1", "ln_pre"):
        return 0
    return int(parts[2]) + 1


def param_group(s: Settings, name: str, shape: Sequence[int]) -> Tuple[float, float]:
    """(lr multiplier, weight decay) of a parameter of the original's model, by its torch
    state-dict name and shape, as `construct_optimizer` groups it under settings `s`."""
    if s["TRAIN.ONLY_LINEAR"] or s["BN.WB_LOCK"] or "text" in name:
        raise ValueError("ONLY_LINEAR, WB_LOCK and text parameters: not in the released recipes")
    weight_decay = float(s["OPTIMIZER.WEIGHT_DECAY"])
    decay_rate = float(s["OPTIMIZER.LAYER_WISE_LR_DECAY"])
    if decay_rate < 1.0:
        # Layer-wise branch. The group's suffix decides the extra factor: a parameter that
        # is both new and in the head ends in '_head' and gets only the head's.
        depth = int(s["VIDEO.BACKBONE.DEPTH"])
        lr = decay_rate ** (depth + 1 - _vit_layer(name, depth))
        suffix = ""
        if any(p in name for p in s["OPTIMIZER.NEW_PARAMS"]):
            suffix = "new_param"
        if s["OPTIMIZER.HEAD_LRMULT"] > 1.0 and "head" in name:
            suffix = "head"
        lr *= {"": 1.0, "new_param": s["OPTIMIZER.NEW_PARAMS_MULT"],
               "head": s["OPTIMIZER.HEAD_LRMULT"]}[suffix]
        no_decay = len(shape) == 1 or name.endswith(".bias")
        return float(lr), 0.0 if no_decay else weight_decay
    # Legacy branch: fixed groups by substrings of the name.
    reduce = s["TRAIN.LR_REDUCE"] and s["TRAIN.FINE_TUNE"]
    bias_lr = 10.0 if reduce else (2.0 if s["OPTIMIZER.BIAS_DOUBLE"] else 1.0)
    custom_lr = 5.0 if reduce else 1.0
    norm_decay = float(s["BN.WEIGHT_DECAY"])
    if "rf" in name:
        if "bn" in name:
            return 1.0, norm_decay
        return (bias_lr, 0.0) if "bias" in name else (custom_lr, weight_decay)
    if "embd" in name or "cls_token" in name:
        return 1.0, 0.0
    if "bn" in name or "norm" in name:
        return 1.0, norm_decay
    if "head" in name:
        return (bias_lr, 0.0) if "bias" in name else (custom_lr, weight_decay)
    if "bias" in name:
        return (2.0 if s["OPTIMIZER.BIAS_DOUBLE"] else 1.0), 0.0
    return 1.0, weight_decay
