"""The train state: created sharded from the start, optionally from pretrained weights.

The state is a dict `{'step', 'params', 'batch_stats', 'opt_state', 'ema'}`:
`batch_stats` is `{}` for models without BatchNorm and `ema` is `{}` unless
an EMA of the weights is kept (then `{'params', 'batch_stats'}`).
Shapes come from `jax.eval_shape`, shardings from the rules, and the state
is produced by `jax.jit(init, out_shardings=...)`, so no device ever holds
an unsharded copy.
"""

import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from tadax.models import layout
from tadax.train.optim import path_str
from tadax.train.sharding import tree_shardings


class InitError(ValueError):
    """Pretrained weights do not fit the model; the message lists every offending parameter."""


def sample_video(model_cfg: ml_collections.ConfigDict, batch: int = 1) -> jax.ShapeDtypeStruct:
    """The `(batch, T, H, W, 3)` float32 input spec of a model config."""
    size = model_cfg.image_size
    return jax.ShapeDtypeStruct((batch, model_cfg.num_frames, size, size, 3), jnp.float32)


def abstract_variables(model: nn.Module, model_cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
    """`{'params': ..., 'batch_stats'?: ...}` as ShapeDtypeStructs; no memory is spent."""
    video = sample_video(model_cfg)
    return jax.eval_shape(lambda v: model.init({"params": jax.random.key(0)}, v, train=False),
                          video)


def _init_fn(model: nn.Module, model_cfg, tx: optax.GradientTransformation, ema: bool
             ) -> Callable:
    def init(rng, pretrained):
        video = jnp.zeros(sample_video(model_cfg).shape, jnp.float32)
        variables = model.init({"params": rng}, video, train=False)
        params = dict(variables["params"])
        batch_stats = dict(variables.get("batch_stats", {}))
        params = _overlay(params, pretrained.get("params", {}))
        batch_stats = _overlay(batch_stats, pretrained.get("batch_stats", {}))
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "batch_stats": batch_stats,
                 "opt_state": tx.init(params), "ema": {}}
        if ema:
            state["ema"] = {"params": params, "batch_stats": batch_stats}
        return state
    return init


def _overlay(fresh: Dict, given: Mapping) -> Dict:
    """`fresh` with the leaves that `given` has (same nesting) replaced."""
    out = dict(fresh)
    for key, value in given.items():
        out[key] = _overlay(dict(fresh[key]), value) if isinstance(value, Mapping) else value
    return out


def state_shardings(mesh: Mesh, abstract_state: Any, cfg: ml_collections.ConfigDict) -> Any:
    """NamedShardings of a train state by `config.sharding` rules."""
    return tree_shardings(mesh, abstract_state, cfg.sharding.rules, cfg.sharding.fsdp_min_size)


def train_state_spec(model: nn.Module, tx: optax.GradientTransformation,
                     cfg: ml_collections.ConfigDict, mesh: Mesh) -> Tuple[Any, Any]:
    """(abstract train state with shardings, its NamedShardings), by `config.sharding` rules."""
    init = _init_fn(model, cfg.model, tx, cfg.train.ema_decay > 0)
    abstract = jax.eval_shape(init, jax.random.key(cfg.seed), {})
    shardings = state_shardings(mesh, abstract, cfg)
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       cfg: ml_collections.ConfigDict, shardings: Any,
                       pretrained: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A fresh train state, sharded as `shardings` (from `train_state_spec`).

    pretrained: `{'params': ..., 'batch_stats': ...}` numpy subtrees to start
    from (as `select_pretrained` returns); everything else is freshly
    initialised from `cfg.seed`.
    """
    pretrained = dict(pretrained or {})
    init = _init_fn(model, cfg.model, tx, cfg.train.ema_decay > 0)
    pre_shardings = {col: _sub_shardings(shardings[col], tree) for col, tree in pretrained.items()}
    pretrained = jax.device_put(pretrained, pre_shardings)
    return jax.jit(init, out_shardings=shardings)(jax.random.key(cfg.seed), pretrained)


def _sub_shardings(shardings: Mapping, tree: Mapping) -> Dict:
    return {k: _sub_shardings(shardings[k], v) if isinstance(v, Mapping) else shardings[k]
            for k, v in tree.items()}


def select_pretrained(loaded: Mapping[str, Any], abstract: Mapping[str, Any], fresh: str
                      ) -> Dict[str, Any]:
    """The pretrained leaves to copy into the model, checked against its shapes.

    loaded: variables read from a checkpoint (numpy). abstract: the model's
    `abstract_variables`. fresh: regex of parameter paths that keep their
    fresh initialisation (e.g. '^head/' to re-learn a classifier).
    Every other model leaf must be in `loaded` with the same shape, and every
    leaf of `loaded` must belong to the model; otherwise InitError lists them.
    `loaded` may be in either layout of the blocks (`tadax/models/layout.py`);
    it is converted to the model's first.
    """
    scan_layers = layout.layout_of(dict(abstract))
    if scan_layers is not None:
        loaded = layout.to_layout(dict(loaded), scan_layers)
    want = {}
    for col, tree in abstract.items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            want[f"{col}/{path_str(path)}"] = tuple(leaf.shape)
    have = {}
    for col, tree in loaded.items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            have[f"{col}/{path_str(path)}"] = np.asarray(leaf)

    def is_fresh(name):
        return bool(re.search(fresh, name.split("/", 1)[1]))

    missing = [n for n in want if n not in have and not is_fresh(n)]
    unknown = [n for n in have if n not in want]
    bad = [f"{n}: {have[n].shape} vs model {want[n]}" for n in want
           if n in have and not is_fresh(n) and have[n].shape != want[n]]
    if missing or unknown or bad:
        lines = ["pretrained weights do not fit the model:"]
        for title, names in (("missing", missing), ("not in the model", unknown),
                             ("shape mismatch", bad)):
            if names:
                lines += [f"  {title} ({len(names)}):"] + [f"    {n}" for n in names[:50]]
        raise InitError("\n".join(lines))
    out: Dict[str, Any] = {}
    for name, value in have.items():
        if is_fresh(name):
            continue
        node = out
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
