"""Mixup / cutmix on device, inside the jitted train step (timm's 'batch' mode).

The (micro-)batch is cut into `num_groups` equal groups of consecutive clips.
Each group draws, per step, whether it is mixed (`mixup_prob`), cutmix or
mixup (`mixup_switch_prob` when both are on) and one coefficient, and mixes
every clip with the clip at the mirrored position of its group. Cutmix pastes
one box, the same on every frame of a clip and on every clip of the group,
drawn as a mask (iota comparisons, no dynamic shapes), and the coefficient is
corrected to the pasted area. Targets are mixed one-hots without smoothing
(the loss smooths them, which equals mixing smoothed one-hots).
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp


def mixing_enabled(data_cfg) -> bool:
    """Whether the train step mixes its clips (`mixup_alpha` or `cutmix_alpha` > 0)."""
    return data_cfg.mixup_alpha > 0 or data_cfg.cutmix_alpha > 0


def cut_box(lam: jax.Array, cy: jax.Array, cx: jax.Array, height: int,
            width: int) -> jax.Array:
    """`(G,)` coefficients and box centres -> `(G, 4)` int32 boxes (y0, y1, x0, x1): sides
    `int(size * sqrt(1 - lam))`, centred on (cy, cx), clipped to the frame."""
    cut = jnp.sqrt(1.0 - lam)
    half_h = jnp.floor(height * cut).astype(jnp.int32) // 2
    half_w = jnp.floor(width * cut).astype(jnp.int32) // 2
    return jnp.stack([jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height),
                      jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)], axis=-1)


def draw(key: jax.Array, data_cfg, num_groups: int, height: int,
         width: int) -> Dict[str, jax.Array]:
    """The mixing decisions of G = `num_groups` groups of (H, W) = (height, width) clips ->
    `{'lam': (G,) float32` (the weight of a clip's own label: 1 where unmixed, the uncovered
    fraction for cutmix), `'cutmix': (G,) bool, 'box': (G, 4) int32` (y0, y1, x0, x1;
    empty where not cutmix)}`."""
    k_mix, k_switch, k_lam_mix, k_lam_cut, k_y, k_x = jax.random.split(key, 6)
    g = (num_groups,)
    mixed = jax.random.uniform(k_mix, g) < data_cfg.mixup_prob
    mixup_on, cutmix_on = data_cfg.mixup_alpha > 0, data_cfg.cutmix_alpha > 0
    if mixup_on and cutmix_on:
        cutmix = jax.random.uniform(k_switch, g) < data_cfg.mixup_switch_prob
    else:
        cutmix = jnp.full(g, cutmix_on)
    cutmix = cutmix & mixed
    ones = jnp.ones(g, jnp.float32)
    lam_mix = (jax.random.beta(k_lam_mix, data_cfg.mixup_alpha, data_cfg.mixup_alpha, g)
               if mixup_on else ones)
    lam_cut = (jax.random.beta(k_lam_cut, data_cfg.cutmix_alpha, data_cfg.cutmix_alpha, g)
               if cutmix_on else ones)
    box = cut_box(lam_cut, jax.random.randint(k_y, g, 0, height),
                  jax.random.randint(k_x, g, 0, width), height, width)
    box = jnp.where(cutmix[:, None], box, 0)
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    lam = jnp.where(cutmix, 1.0 - area / (height * width), jnp.where(mixed, lam_mix, 1.0))
    return {"lam": lam.astype(jnp.float32), "cutmix": cutmix, "box": box}


def mix(video: jax.Array, labels: jax.Array, num_classes: int,
        params: Dict[str, jax.Array]) -> Tuple[jax.Array, jax.Array]:
    """`(B, T, H, W, C)` clips and `(B,)` labels -> mixed clips (same dtype) and `(B,
    num_classes)` float32 targets summing to 1, with the G groups of `params` (`draw`).
    B must be a multiple of G; clip j of a group of n pairs with clip n - 1 - j."""
    g = params["lam"].shape[0]
    b, _, height, width, _ = video.shape
    groups = video.reshape((g, b // g) + video.shape[1:])
    partner = groups[:, ::-1]
    lam = params["lam"].reshape(g, 1, 1, 1, 1, 1)
    blended = (groups.astype(jnp.float32) * lam
               + partner.astype(jnp.float32) * (1.0 - lam)).astype(video.dtype)
    y = jnp.arange(height)[None, :, None]
    x = jnp.arange(width)[None, None, :]
    y0, y1, x0, x1 = (params["box"][:, i, None, None] for i in range(4))
    inside = (y >= y0) & (y < y1) & (x >= x0) & (x < x1)                  # (G, H, W)
    pasted = jnp.where(inside[:, None, None, :, :, None], partner, groups)
    cutmix = params["cutmix"].reshape(g, 1, 1, 1, 1, 1)
    mixed = jnp.where(cutmix, pasted, blended).reshape(video.shape)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32).reshape(g, b // g, -1)
    lam_t = params["lam"][:, None, None]
    targets = onehot * lam_t + onehot[:, ::-1] * (1.0 - lam_t)
    return mixed, targets.reshape(b, num_classes)
