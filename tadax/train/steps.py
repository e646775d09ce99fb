"""Jitted train and eval steps with explicit shardings.

The train step takes the global batch `{'video': (B, T, H, W, 3) float32,
'label': (B,) int32}` split over the mesh's batch axes and the train state
(donated), and returns the new state and replicated scalar metrics. With
`grad_accum_steps = k` the batch is processed as k micro-batches of B/k
(example i goes to micro-batch i mod k, so every micro-batch stays spread
over all devices) and their gradients averaged: the update equals one on
the whole batch, except that BatchNorm sees B/k clips at a time.

Mixup / cutmix (`tadax/train/mixup.py`, on when the data config sets an
alpha) runs in the step on each micro-batch: its groups are the D device
shares of the micro-batch (B / (k D) clips each, the original's per-GPU
batch when k D equals its GPU count), so pairing needs no communication.
The random draws come from the step's key (seed, step): a resumed run mixes
as an uninterrupted one.
"""

from typing import Any, Callable, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tadax.train import mixup
from tadax.train.sharding import BATCH_AXES, batch_sharding, replicated


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float,
                  soft_labels: Optional[jax.Array] = None) -> jax.Array:
    """Mean softmax cross-entropy of `(B, C)` logits against `(B,)` labels smoothed as the
    original does (`1 - s + s/C` on the label, `s/C` elsewhere).

    soft_labels: `(B, C)` mixup/cutmix targets that replace the one-hot labels; smoothing
    them equals mixing smoothed one-hots, which is what the original's mixup does.
    """
    hard = jax.nn.one_hot(labels, logits.shape[-1])
    targets = optax.smooth_labels(hard if soft_labels is None else soft_labels, smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def _forward(model: nn.Module, params, batch_stats, video, rng, train: bool):
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if not train:
        return model.apply(variables, video, train=False), batch_stats
    k_drop, k_path = jax.random.split(rng)
    rngs = {"dropout": k_drop, "drop_path": k_path}
    if batch_stats:
        logits, updated = model.apply(variables, video, train=True, rngs=rngs,
                                      mutable=["batch_stats"])
        return logits, updated["batch_stats"]
    return model.apply(variables, video, train=True, rngs=rngs), batch_stats


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: Callable,
                    cfg: ml_collections.ConfigDict, mesh: Mesh, shardings: Any) -> Callable:
    """`step(state, batch) -> (state, metrics)`, jitted; `state` is donated.

    metrics: loss, accuracy (top-1 % on the train batch), grad_norm, lr (base,
    before multipliers), all float32 scalars.
    """
    accum = cfg.train.grad_accum_steps
    smoothing = cfg.train.label_smoothing
    ema_decay = cfg.train.ema_decay
    seed = cfg.seed
    mixing = mixup.mixing_enabled(cfg.data)
    groups = mesh.devices.size

    def loss_fn(params, batch_stats, video, labels, rng):
        soft = None
        if mixing:
            rng, mix_rng = jax.random.split(rng)
            # Replicated draws: each device takes its group's; sharded, the Beta sampler's
            # rejection loop would synchronise the devices at every iteration.
            mix = jax.lax.with_sharding_constraint(
                mixup.draw(mix_rng, cfg.data, groups, video.shape[2], video.shape[3]),
                replicated(mesh))
            video, soft = mixup.mix(video, labels, cfg.data.num_classes, mix)
        logits, new_stats = _forward(model, params, batch_stats, video, rng, train=True)
        loss = cross_entropy(logits, labels, smoothing, soft)
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        return loss, (new_stats, correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro_batches(x):
        # (B, ...) -> (k, B/k, ...) with example i in micro-batch i mod k.
        b = x.shape[0]
        x = x.reshape((b // accum, accum) + x.shape[1:])
        x = jnp.swapaxes(x, 0, 1)
        spec = P(None, BATCH_AXES, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def step(state, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state["step"])
        params, video, labels = state["params"], batch["video"], batch["label"]
        if accum == 1:
            (loss, (stats, correct)), grads = grad_fn(params, state["batch_stats"], video,
                                                      labels, rng)
        else:
            def body(carry, xs):
                stats, grads, loss, correct = carry
                v, l, i = xs
                (mloss, (stats, mcorrect)), g = grad_fn(params, stats, v, l,
                                                        jax.random.fold_in(rng, i))
                grads = jax.tree_util.tree_map(jnp.add, grads, g)
                return (stats, grads, loss + mloss, correct + mcorrect), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            init = (state["batch_stats"], zeros, jnp.zeros((), jnp.float32),
                    jnp.zeros((), jnp.int32))
            (stats, grads, loss, correct), _ = jax.lax.scan(
                body, init, (micro_batches(video), micro_batches(labels), jnp.arange(accum)))
            grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
            loss = loss / accum
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        new_state = dict(state, step=state["step"] + 1, params=params, batch_stats=stats,
                         opt_state=opt_state)
        if ema_decay > 0:
            new_state["ema"] = jax.tree_util.tree_map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state["ema"],
                {"params": params, "batch_stats": stats})
        metrics = {"loss": loss, "accuracy": 100.0 * correct / labels.shape[0],
                   "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"])}
        return new_state, jax.tree_util.tree_map(lambda m: m.astype(jnp.float32), metrics)

    batch_spec = {"video": batch_sharding(mesh), "label": batch_sharding(mesh)}
    return jax.jit(step, in_shardings=(shardings, batch_spec),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=0)


def make_eval_step(model: nn.Module, mesh: Mesh, variable_shardings: Any) -> Callable:
    """`step(variables, video) -> (B, C)` softmax probabilities, replicated on every device.

    variables: `{'params': ..., 'batch_stats'?: ...}` as sharded in the train state.
    """
    def step(variables, video):
        logits, _ = _forward(model, variables["params"], variables.get("batch_stats"), video,
                             None, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return jax.jit(step, in_shardings=(variable_shardings, batch_sharding(mesh)),
                   out_shardings=replicated(mesh))


def eval_variables(state: Dict[str, Any], use_ema: bool) -> Dict[str, Any]:
    """The `{'params', 'batch_stats'?}` of a train state to evaluate (the EMA ones if
    `use_ema` and kept). Works on shardings trees too."""
    source = state["ema"] if use_ema and state["ema"] else state
    variables = {"params": source["params"]}
    if source["batch_stats"]:
        variables["batch_stats"] = source["batch_stats"]
    return variables
