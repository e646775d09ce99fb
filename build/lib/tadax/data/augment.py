"""Training clip augmentation (TF ops; RandAugment through PIL), one draw per clip.

Order as in the original's `base_dataset._config_transform`: horizontal flip,
random resized crop to `train_crop_size`, RandAugment, grayscale with
probability `grayscale_p`, normalisation. Every random choice is made once per
clip, so all frames get the same crop, flip, RandAugment ops and grayscale.
The flip is drawn first and returned so that SSv2 can swap left/right labels.
All randomness is stateless: the same `(2,)` seed gives the same clip.
"""

import math

import tensorflow as tf

from tadax.data import randaugment


def crop_window(seed, height, width, scale=(0.08, 1.0), ratio=(0.75, 1.333), attempts: int = 10):
    """torchvision's RandomResizedCrop window -> (y, x, h, w) int32.

    Up to `attempts` draws of area fraction ~ U(scale) and log aspect ~ U(log ratio)
    whose box fits; otherwise the centre crop with the aspect clamped to `ratio`.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    H, W = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = H * W
    target = area * tf.random.stateless_uniform([attempts], seeds[0], scale[0], scale[1])
    log_r = tf.random.stateless_uniform([attempts], seeds[1], math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_r)
    w = tf.round(tf.sqrt(target * aspect))
    h = tf.round(tf.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= W) & (h <= H)
    first = tf.argmax(tf.cast(ok, tf.int32))
    in_ratio = W / H
    fb_w = tf.where(in_ratio < ratio[0], W, tf.where(in_ratio > ratio[1], tf.round(H * ratio[1]), W))
    fb_h = tf.where(in_ratio < ratio[0], tf.round(W / ratio[0]), H)
    any_ok = tf.reduce_any(ok)
    cw = tf.where(any_ok, w[first], fb_w)
    ch = tf.where(any_ok, h[first], fb_h)
    u = tf.random.stateless_uniform([2], seeds[2])
    y = tf.where(any_ok, tf.floor(u[0] * (H - ch + 1)), tf.floor((H - ch) / 2))
    x = tf.where(any_ok, tf.floor(u[1] * (W - cw + 1)), tf.floor((W - cw) / 2))
    return tf.cast(tf.stack([y, x, ch, cw]), tf.int32)


def decode_cropped(jpegs, window):
    """(T,) JPEG strings -> (T, h, w, 3) uint8, each decoded only inside `window` (y, x, h, w)."""
    return tf.map_fn(lambda j: tf.image.decode_and_crop_jpeg(j, window, channels=3), jpegs,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def decode_all(jpegs):
    """(T,) JPEG strings -> (T, H, W, 3) uint8."""
    return tf.map_fn(lambda j: tf.image.decode_jpeg(j, channels=3), jpegs,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def grayscale(frames):
    """(..., 3) -> ITU-R 601-2 luma, repeated on the 3 channels (float32)."""
    weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
    luma = tf.reduce_sum(tf.cast(frames, tf.float32) * weights, axis=-1, keepdims=True)
    return tf.repeat(luma, 3, axis=-1)


def train_clip(jpegs, data_cfg, seed):
    """Selected JPEG frames (T,) -> ((T, S, S, 3) float32 in [0, 255], flipped: bool).

    S = data_cfg.train_crop_size.
    """
    s = tf.random.experimental.stateless_split(seed, 5)
    size = data_cfg.train_crop_size
    shape = tf.image.extract_jpeg_shape(jpegs[0])
    window = crop_window(s[0], shape[0], shape[1], tuple(data_cfg.train_scale),
                         tuple(data_cfg.ratio))
    frames = tf.image.resize(tf.cast(decode_cropped(jpegs, window), tf.float32), [size, size],
                             method="bilinear", antialias=False)
    flipped = tf.constant(False)
    if data_cfg.flip:
        flipped = tf.random.stateless_uniform([], s[1]) < 0.5
        frames = tf.cond(flipped, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
    if data_cfg.randaugment:
        policy = randaugment.parse_policy(data_cfg.randaugment)
        fill = tuple(min(255, int(round(255 * m))) for m in data_cfg.mean)
        # The original feeds RandAugment uint8 images (float x 255, truncated).
        frames = randaugment.rand_augment(tf.floor(tf.clip_by_value(frames, 0, 255)), policy,
                                          s[2], fill)
    if data_cfg.grayscale_p > 0:
        gray = tf.random.stateless_uniform([], s[3]) < data_cfg.grayscale_p
        frames = tf.cond(gray, lambda: grayscale(frames), lambda: frames)
    frames = tf.ensure_shape(frames, [data_cfg.num_frames, size, size, 3])
    return frames, flipped

