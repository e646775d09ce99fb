"""RandAugment for clips: the same ops and magnitudes on every frame (TF ops, stateless).

Policy strings as timm's and the original's: `rand-m9-n4-mstd0.5-inc1` = 4 ops
drawn with replacement from the 15 'increasing' ops, each applied with
probability 0.5 at magnitude ~ N(9, 0.5) clipped to [0, 10] (drawn per op).
Every draw is made once per clip, so all frames get the same transform. Pixel
ops follow PIL's definitions on uint8 values; geometric ops use bilinear
sampling (PIL's bicubic in the original) and fill with the normalisation mean.
"""

import dataclasses
import math
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
       "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
       "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
       "TranslateYRel")
MAX_LEVEL = 10.0


@dataclasses.dataclass(frozen=True)
class Policy:
    """A parsed RandAugment policy string."""
    magnitude: float
    num_ops: int
    magnitude_std: float


def parse_policy(policy: str) -> Policy:
    """`rand-m9-n4-mstd0.5-inc1` -> Policy(magnitude=9, num_ops=4, magnitude_std=0.5)."""
    parts = policy.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment policy {policy!r} must start with 'rand-'")
    out = {"magnitude": 10.0, "num_ops": 2, "magnitude_std": 0.0, "increasing": 0}
    keys = (("mstd", "magnitude_std"), ("inc", "increasing"), ("m", "magnitude"), ("n", "num_ops"))
    for part in parts[1:]:
        match = [(key, name) for key, name in keys if part.startswith(key)]
        if not match:
            raise ValueError(f"RandAugment policy {policy!r}: unknown part {part!r}")
        key, name = match[0]
        out[name] = float(part[len(key):])
    if not out["increasing"]:
        raise ValueError(f"RandAugment policy {policy!r}: only the 'inc1' op set is implemented")
    return Policy(magnitude=out["magnitude"], num_ops=int(out["num_ops"]),
                  magnitude_std=out["magnitude_std"])


def _blend(a, b, factor):
    """PIL ImageEnhance (Image.blend): b + factor * (a - b), clipped to [0, 255] and truncated."""
    return tf.floor(tf.clip_by_value(b + factor * (a - b), 0.0, 255.0))


def _gray(x):
    """(..., 3) -> (..., 1) ITU-R 601-2 luma, rounded as PIL's 'L' conversion."""
    return tf.round(tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True))


def _affine(x, matrix, fill):
    """Samples `x` (T, H, W, 3) at input = matrix @ (x, y, 1) for each output pixel; pixels
    from outside the frame take the per-channel `fill` (shift by -fill, fill with 0, shift back)."""
    m = tf.cast(tf.concat([matrix, tf.zeros([2])], 0), tf.float32)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x - fill, transforms=tf.tile(m[None], [tf.shape(x)[0], 1]),
        output_shape=tf.shape(x)[1:3], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT")
    return out + fill


def _auto_contrast(x):
    lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
    hi = tf.reduce_max(x, axis=[1, 2], keepdims=True)
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1e-6), 1.0)
    return tf.where(hi > lo, tf.floor((x - lo) * scale), x)


def _equalize(x):
    """PIL ImageOps.equalize per frame and channel."""
    t, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    # Transposed as float32, then cast: where TensorFlow's oneDNN transpose takes no int32
    # (a CPU without the AVX-512 extensions it wants) it logs an E-line into the command's
    # output ("oneDNN supports DT_INT32 only on platforms with AVX-512").
    chans = tf.reshape(tf.cast(tf.transpose(x, [0, 3, 1, 2]), tf.int32), [t * 3, h * w])
    hist = tf.math.bincount(chans, minlength=256, maxlength=256, axis=-1)
    last = tf.reduce_max(tf.where(hist > 0, tf.range(256)[None], -1), axis=1, keepdims=True)
    last_count = tf.gather(hist, last, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1, keepdims=True) - last_count) // 255
    cum = tf.cumsum(hist, axis=1, exclusive=True)
    lut = tf.clip_by_value((cum + step // 2) // tf.maximum(step, 1), 0, 255)
    mapped = tf.gather(lut, chans, batch_dims=1)
    mapped = tf.where(step > 0, mapped, chans)
    return tf.transpose(tf.reshape(tf.cast(mapped, tf.float32), [t, 3, h, w]), [0, 2, 3, 1])


def _sharpness(x, factor):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.round(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID"))
    smooth = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    border = tf.pad(tf.zeros([h - 2, w - 2]), [[1, 1], [1, 1]], constant_values=1.0)
    smooth = x * border[None, :, :, None] + smooth * (1.0 - border[None, :, :, None])
    return _blend(x, smooth, factor)


def _apply_op(op: int, x, level, sign, fill):
    """Op `op` (index into OPS) at `level` in [0, 1] with sign +-1 on (T, H, W, 3) float [0, 255]."""
    h = tf.cast(tf.shape(x)[1], tf.float32)
    w = tf.cast(tf.shape(x)[2], tf.float32)
    enhance = 1.0 + sign * level * 0.9
    name = OPS[op]
    if name == "AutoContrast":
        return _auto_contrast(x)
    if name == "Equalize":
        return _equalize(x)
    if name == "Invert":
        return 255.0 - x
    if name == "Rotate":
        angle = -sign * level * 30.0 * math.pi / 180.0
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0   # PIL's centre in pixel-index coordinates
        c, s = tf.cos(angle), tf.sin(angle)
        return _affine(x, tf.stack([c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy]), fill)
    if name == "PosterizeIncreasing":
        bits = 4 - tf.cast(level * 4.0, tf.int32)
        mask = tf.bitwise.invert(tf.bitwise.left_shift(1, 8 - bits) - 1)
        return tf.cast(tf.bitwise.bitwise_and(tf.cast(x, tf.int32), mask), tf.float32)
    if name == "SolarizeIncreasing":
        threshold = 256.0 - tf.floor(level * 256.0)
        return tf.where(x >= threshold, 255.0 - x, x)
    if name == "SolarizeAdd":
        add = tf.floor(level * 110.0)
        return tf.where(x < 128.0, tf.minimum(x + add, 255.0), x)
    if name == "ColorIncreasing":
        return _blend(x, _gray(x), enhance)
    if name == "ContrastIncreasing":
        mean = tf.round(tf.reduce_mean(_gray(x), axis=[1, 2, 3], keepdims=True))
        return _blend(x, mean, enhance)
    if name == "BrightnessIncreasing":
        return _blend(x, tf.zeros_like(x), enhance)
    if name == "SharpnessIncreasing":
        return _sharpness(x, enhance)
    if name == "ShearX":
        shear = sign * level * 0.3    # + shear / 2: PIL maps pixel centres, TF pixel indices
        return _affine(x, tf.stack([1.0, shear, shear / 2.0, 0.0, 1.0, 0.0]), fill)
    if name == "ShearY":
        shear = sign * level * 0.3
        return _affine(x, tf.stack([1.0, 0.0, 0.0, shear, 1.0, shear / 2.0]), fill)
    if name == "TranslateXRel":
        return _affine(x, tf.stack([1.0, 0.0, sign * level * 0.45 * w, 0.0, 1.0, 0.0]), fill)
    return _affine(x, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, sign * level * 0.45 * h]), fill)


def draw(policy: Policy, seed) -> Dict[str, tf.Tensor]:
    """The random choices of one clip for its n = `policy.num_ops` ops: `{'ops': (n,) int32`
    indices into OPS, uniform with replacement; `'apply': (n,) bool`, each with probability
    0.5; `'levels': (n,) float32` magnitude / 10, the magnitude ~ N(m, mstd) clipped to
    [0, 10]; `'signs': (n,) float32` -1 or +1 with probability 0.5 each`}`.

    seed: `(2,)` int stateless seed.
    """
    n = policy.num_ops
    seeds = tf.random.experimental.stateless_split(seed, 4)
    mags = policy.magnitude + policy.magnitude_std * tf.random.stateless_normal([n], seeds[2])
    return {"ops": tf.random.stateless_uniform([n], seeds[0], 0, len(OPS), dtype=tf.int32),
            "apply": tf.random.stateless_uniform([n], seeds[1]) < 0.5,
            "levels": tf.clip_by_value(mags, 0.0, MAX_LEVEL) / MAX_LEVEL,
            "signs": tf.where(tf.random.stateless_uniform([n], seeds[3]) < 0.5, -1.0, 1.0)}


def rand_augment(frames, policy: Policy, seed, fill: Sequence[float]):
    """RandAugment `policy` on a clip `(T, H, W, 3)` float32 in [0, 255] -> same shape: the
    ops of `draw(policy, seed)` applied in turn, each to the previous one's rounded output.

    seed: `(2,)` int stateless seed; every random choice is made once per clip.
    fill: per-channel value of pixels moved in from outside (0-255).
    """
    d = draw(policy, seed)
    fill = tf.constant(fill, tf.float32)
    x = frames
    for i in range(policy.num_ops):
        branches = [lambda k=k: tf.round(_apply_op(k, x, d["levels"][i], d["signs"][i], fill))
                    for k in range(len(OPS))]
        x = tf.cond(d["apply"][i], lambda: tf.switch_case(d["ops"][i], branches), lambda: x)
        x = tf.ensure_shape(x, frames.shape)
    return x


def augment_clip(frames: np.ndarray, policy: Policy, seed: int, fill: Sequence[float]) -> np.ndarray:
    """Numpy entry point: `(T, H, W, 3)` uint8 -> `(T, H, W, 3)` uint8 through `rand_augment`
    with the stateless seed derived from the integer `seed`."""
    pair = tf.constant([seed >> 31, seed & (2 ** 31 - 1)], tf.int64)
    out = rand_augment(tf.constant(frames, tf.float32), policy, pair, fill)
    return np.asarray(tf.clip_by_value(out, 0, 255).numpy(), np.uint8)
