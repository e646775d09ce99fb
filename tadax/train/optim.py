"""The optimizer of the recipes: AdamW with per-parameter lr multipliers and decay masks.

Per-parameter rules are `(regex, value)` lists read from `config.optimizer`
and matched with `re.search` against '/'-joined parameter paths
(`backbone/layers_3/tada/tada_proj/kernel`); the first matching rule wins,
no match means 1.0. They mirror the parameter groups of the original's
optimizer:

  lr_mults        lr multiplier per parameter;
  wd_mults        weight-decay multiplier (0.0 = not decayed);
  no_decay_1d     parameters of rank <= 1 are never decayed;
  layer_decay     `rate ** (num_layers + 1 - layer_id)` on top of lr_mults, with
                  `layer_id` from `layer_ids`, `(regex, value)` rules: without a
                  group in the regex the value is the id (negative counts from
                  the end, -1 = num_layers + 1); with one, the id is the
                  captured integer plus the value.

The rules are written for the unrolled layout's paths (`backbone/layers_3/...`).
A stacked leaf (`scan_layers`, `tadax/models/layout.py`: `backbone/layers/...`
with a leading axis over the blocks) gets each rule evaluated on the path and
shape of each of its blocks; where the blocks disagree (layer-wise decay) its
multiplier is an array over the leading axis, so both layouts update every
block alike.

The update is the original's `torch.optim.AdamW` with per-group lr:
`p <- p - lr * m_mult * (adam(g) + wd * w_mult * p)`.
"""

import math
import re
from typing import Any, Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tadax.errors import ConfigError
from tadax.models import layout

Rules = Sequence[Tuple[str, Any]]


def path_str(path) -> str:
    """A `jax.tree_util` key path -> 'a/b/c'."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def first_match(name: str, rules: Rules, default: Any = 1.0) -> Any:
    """The value of the first rule whose regex `re.search`-matches `name`, else `default`."""
    for pattern, value in rules:
        if re.search(pattern, name):
            return value
    return default


def layer_id(name: str, rules: Rules, num_layers: int) -> int:
    """Layer index in [0, num_layers + 1] of a parameter, by the `layer_ids` rules."""
    for pattern, value in rules:
        match = re.search(pattern, name)
        if match is None:
            continue
        if match.groups():
            return int(match.group(1)) + int(value)
        return int(value) if value >= 0 else num_layers + 2 + int(value)
    raise ValueError(f"no layer_ids rule matches parameter {name!r}")


def _per_block(rule: Callable[[str, Tuple[int, ...]], float]) -> Callable:
    """A rule on (unrolled path, shape) -> a tree_map function for either layout: a float,
    or for a stacked leaf whose blocks disagree, a float32 array `(n, 1, ..., 1)`."""
    def one(path, leaf):
        name, shape = path_str(path), tuple(leaf.shape)
        if not layout.STACKED_PATH.search(name):
            return rule(name, shape)
        values = [rule(n, shape[1:]) for n in layout.block_paths(name, shape[0])]
        if len(set(values)) == 1:
            return values[0]
        return np.asarray(values).astype(np.float32).reshape((-1,) + (1,) * (len(shape) - 1))
    return one


def multipliers(params: Any, cfg: ml_collections.ConfigDict) -> Tuple[Any, Any]:
    """Per-parameter (lr multiplier, weight-decay multiplier) trees: python floats, and for
    stacked leaves whose blocks differ, float32 arrays over the leading axis.

    params: the parameter tree, arrays or `jax.ShapeDtypeStruct`s (only shapes read).
    cfg: `config.optimizer`.
    """
    decay = cfg.layer_decay

    def lr_mult(name, shape):
        mult = float(first_match(name, cfg.lr_mults))
        if decay.rate < 1.0:
            mult *= decay.rate ** (decay.num_layers + 1 - layer_id(name, decay.layer_ids,
                                                                     decay.num_layers))
        return mult

    def wd_mult(name, shape):
        if cfg.no_decay_1d and len(shape) <= 1:
            return 0.0
        return float(first_match(name, cfg.wd_mults))

    return (jax.tree_util.tree_map_with_path(_per_block(lr_mult), params),
            jax.tree_util.tree_map_with_path(_per_block(wd_mult), params))


def check_warmup(cfg: ml_collections.ConfigDict, epochs: float) -> None:
    """ConfigError unless the warmup of `cfg` (`config.optimizer`) ends within `epochs`."""
    if not 0 <= cfg.warmup_epochs < epochs:
        raise ConfigError(f"--config.optimizer.warmup_epochs={cfg.warmup_epochs} must be at "
                          f"least 0 and less than the run's epochs ({epochs}, "
                          "--config.train.epochs)")


def lr_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int, epochs: float) -> Callable:
    """step -> base learning rate, per step as the original computes it per iteration.

    `cosine`: `base * (1 + cos(pi * e / E)) / 2`; `cosine_v2`: from `base` to
    `end_lr`, over `[warmup, E]` when `cosine_after_warmup` else `[0, E]`; both
    preceded by a linear warmup from `warmup_start_lr` to the schedule's value
    at `warmup_epochs`. `e = step / steps_per_epoch`, `E = epochs` (the run's length).
    """
    check_warmup(cfg, epochs)
    base, end, warm = cfg.base_lr, cfg.end_lr, cfg.warmup_epochs

    if cfg.schedule == "cosine":
        def main(e):
            return base * (jnp.cos(math.pi * e / epochs) + 1.0) * 0.5
    elif cfg.schedule == "cosine_v2":
        offset = warm if cfg.cosine_after_warmup else 0.0

        def main(e):
            return end + (base - end) * (jnp.cos(math.pi * (e - offset) / (epochs - offset)) + 1.0) * 0.5
    else:
        raise ValueError(f"unknown lr schedule {cfg.schedule!r} (cosine | cosine_v2)")

    def schedule(step):
        e = jnp.asarray(step, jnp.float32) / steps_per_epoch
        if warm <= 0:
            return main(e)
        warm_lr = cfg.warmup_start_lr + e * (main(warm) - cfg.warmup_start_lr) / warm
        return jnp.where(e < warm, warm_lr, main(e))

    return schedule


def _is(m: Any, value: float) -> bool:
    return isinstance(m, float) and m == value


def _scale_by_tree(mults: Any) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        return jax.tree_util.tree_map(lambda u, m: u if _is(m, 1.0) else u * m,
                                      updates, mults), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _add_decay_tree(weight_decay: float, mults: Any) -> optax.GradientTransformation:
    def update(updates, state, params):
        return jax.tree_util.tree_map(
            lambda u, p, m: u if _is(m, 0.0) else u + (weight_decay * m) * p,
            updates, params, mults), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build_optimizer(params: Any, cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                    epochs: float) -> Tuple[optax.GradientTransformation, Callable]:
    """(AdamW transformation, lr schedule) for a parameter tree, `config.optimizer` and
    the run's length in epochs."""
    if cfg.name != "adamw":
        raise ValueError(f"unsupported optimizer {cfg.name!r}; the recipes use adamw")
    lr_mults, wd_mults = multipliers(params, cfg)
    schedule = lr_schedule(cfg, steps_per_epoch, epochs)
    tx = optax.chain(
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        _add_decay_tree(cfg.weight_decay, wd_mults),
        optax.scale_by_learning_rate(schedule),
        _scale_by_tree(lr_mults),
    )
    return tx, schedule


def describe_groups(params: Any, cfg: ml_collections.ConfigDict) -> Dict[Tuple[float, float], int]:
    """{(lr multiplier, wd multiplier): number of parameter arrays}, for the run log.

    A stacked leaf counts once per block, so both layouts log the same groups.
    """
    lr_mults, wd_mults = multipliers(params, cfg)
    groups: Dict[Tuple[float, float], int] = {}

    def count(path, leaf, lr, wd):
        stacked = layout.STACKED_PATH.search(path_str(path))
        for i in range(leaf.shape[0] if stacked else 1):
            key = (round(_block_value(lr, i), 8), _block_value(wd, i))
            groups[key] = groups.get(key, 0) + 1

    jax.tree_util.tree_map_with_path(count, params, lr_mults, wd_mults)
    return groups


def _block_value(mult: Any, index: int) -> float:
    """Block `index`'s value of a multiplier (a float: the same for every block)."""
    return mult if isinstance(mult, float) else float(np.ravel(mult)[index])
