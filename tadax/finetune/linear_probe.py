"""A linear probe: a softmax classifier trained on a frozen backbone's features.

The features are the pooled backbone outputs of every evaluation view of every video
(`python -m tadax.features` shards, `aggregate='all'`: `(videos, views, D)`); each view is
a training example with its video's label. Features are standardised with the train
views' mean and standard deviation, and the classifier minimises

    mean over views of cross-entropy(softmax(z W + b), y) + l2 / 2 * |W|^2

(z the standardised features), a strictly convex problem solved in float32 with
L-BFGS (optax) until the gradient's largest entry is below a tolerance. The L2 weight
is the one of a grid with the best video accuracy under k-fold cross-validation over the
train videos (folds drawn per class, all views of a video in one fold; ties go to the
larger weight). The standardisation is folded into the result, so the logits of raw
features are `x @ kernel + bias`: the model's own head (`head/out`), which makes a
backbone plus probe a complete model.
"""

import functools
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def standardisation(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, std) over the rows of `(N, D)` features; a constant feature gets std 1."""
    mean = x.mean(0)
    std = x.std(0)
    return mean, np.where(std > 1e-6 * max(1.0, float(std.max(initial=0.0))), std, 1.0)


def objective(params: Dict[str, jax.Array], z: jax.Array, onehot: jax.Array,
              weights: jax.Array, l2: float) -> jax.Array:
    """Weighted mean softmax cross-entropy of `z @ kernel + bias` plus `l2 / 2 |kernel|^2`."""
    logits = z @ params["kernel"] + params["bias"]
    losses = optax.softmax_cross_entropy(logits, onehot)
    return (jnp.sum(weights * losses) / jnp.sum(weights)
            + 0.5 * l2 * jnp.sum(params["kernel"] ** 2))


@functools.partial(jax.jit, static_argnames=("num_classes", "max_steps"))
def _solve(z, labels, weights, l2, tolerance, num_classes: int, max_steps: int):
    onehot = jax.nn.one_hot(labels, num_classes)
    fun = functools.partial(objective, z=z, onehot=onehot, weights=weights, l2=l2)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)
    params = {"kernel": jnp.zeros((z.shape[1], num_classes), jnp.float32),
              "bias": jnp.zeros((num_classes,), jnp.float32)}

    def step(carry):
        params, state, i = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(params, updates), state, i + 1

    def going(carry):
        _, state, i = carry
        largest = optax.tree.max(jax.tree_util.tree_map(jnp.abs, optax.tree.get(state, "grad")))
        return (i == 0) | ((i < max_steps) & (largest > tolerance))

    params, _, steps = jax.lax.while_loop(going, step, (params, opt.init(params), 0))
    return params, steps


def fit(z: np.ndarray, labels: np.ndarray, num_classes: int, l2: float, max_steps: int,
        tolerance: float, weights: Optional[np.ndarray] = None
        ) -> Tuple[np.ndarray, np.ndarray, int]:
    """(kernel (D, C), bias (C,), L-BFGS steps) minimising `objective` on `(N, D)` features
    `z` with `(N,)` integer labels and `(N,)` weights (default 1; 0 leaves a row out, so
    that subsets of one array share one compiled solver)."""
    weights = np.ones(len(z)) if weights is None else weights
    params, steps = _solve(jnp.asarray(z, jnp.float32), jnp.asarray(labels, jnp.int32),
                           jnp.asarray(weights, jnp.float32), jnp.float32(l2),
                           jnp.float32(tolerance), num_classes, max_steps)
    return np.asarray(params["kernel"]), np.asarray(params["bias"]), int(steps)


def view_probs(features: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Softmax probabilities `(..., C)` of `(..., D)` raw features."""
    logits = features.astype(np.float64) @ kernel + bias
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(-1, keepdims=True)


def _correct(features, labels, kernel, bias) -> int:
    """How many of the videos of `(N, V, D)` features the summed view probabilities get right."""
    return int(np.sum(view_probs(features, kernel, bias).sum(1).argmax(-1) == labels))


def _fit_raw(features: np.ndarray, labels: np.ndarray, videos: np.ndarray, num_classes: int,
             l2: float, max_steps: int, tolerance: float) -> Tuple[np.ndarray, np.ndarray, int]:
    """`fit` on the views of the `(N,)` boolean `videos` of `(N, V, D)` features (each view
    labelled with its video's label), standardised with their mean and deviation and
    folded back: (kernel, bias) for raw features, steps."""
    n, v, d = features.shape
    flat = features.reshape(n * v, d).astype(np.float64)
    rows = np.repeat(videos, v)
    mean, std = standardisation(flat[rows])
    kernel, bias, steps = fit((flat - mean) / std, np.repeat(labels, v), num_classes, l2,
                              max_steps, tolerance, weights=rows.astype(np.float32))
    kernel, bias = kernel.astype(np.float64), bias.astype(np.float64)
    return kernel / std[:, None], bias - (mean / std) @ kernel, steps


def folds_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """`(N,)` fold of each video: within each class, a seeded shuffle dealt round-robin."""
    out = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = np.random.default_rng([seed, int(c)]).permutation(len(members))
        out[members[order]] = np.arange(len(members)) % folds
    return out


def train(features: np.ndarray, labels: np.ndarray, num_classes: int, l2_grid: Sequence[float],
          folds: int, max_steps: int, tolerance: float, seed: int = 0, log=print
          ) -> Dict[str, np.ndarray]:
    """The probe of `(N, V, D)` train features with `(N,)` labels: `kernel` (D, C) and
    `bias` (C,) for raw features, the chosen `l2`, and the cross-validation top-1 (%) of
    each grid value (`cv_l2`, `cv_top1`; empty for a grid of one)."""
    grid = sorted(set(float(x) for x in l2_grid))
    scores = []
    if len(grid) > 1:
        fold = folds_of(labels, folds, seed)
        for l2 in grid:
            correct = total = 0
            for k in range(folds):
                held = fold == k
                if not held.any():
                    continue
                kernel, bias, _ = _fit_raw(features, labels, ~held, num_classes, l2,
                                           max_steps, tolerance)
                correct += _correct(features[held], labels[held], kernel, bias)
                total += int(held.sum())
            scores.append(100.0 * correct / total)
        best = max(range(len(grid)), key=lambda i: (scores[i], grid[i]))
        log(f"linear probe: l2 {grid[best]:g}, the best of {folds}-fold cross-validation on the "
            "train videos (top-1 " + ", ".join(f"l2 {g:g}: {s:.1f}%"
                                              for g, s in zip(grid, scores)) + ")")
    else:
        best = 0
    kernel, bias, steps = _fit_raw(features, labels, np.ones(len(labels), bool), num_classes,
                                   grid[best], max_steps, tolerance)
    n, v, d = features.shape
    log(f"linear probe: {n} videos x {v} views of {d} features -> {num_classes} classes, "
        f"L-BFGS {steps} steps")
    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32),
            "l2": np.float64(grid[best]), "cv_l2": np.asarray(grid if scores else [], np.float64),
            "cv_top1": np.asarray(scores, np.float64), "steps": np.int64(steps)}
