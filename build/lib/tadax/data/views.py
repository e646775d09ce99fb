"""Evaluation views and normalisation (TF ops), placed as the original places them.

A view is (temporal clip k of `num_clips`) x (spatial crop c of `num_crops`),
numbered `k * num_crops + c`. Each clip's frames are resized so that the short
side is `test_scale` (the long side scaled and truncated, bilinear), then cut
into `num_crops` squares of `test_crop_size`: 1 = the centre; 3 = the start,
centre and end along the long side (along the height for square frames).
"""

import tensorflow as tf

from tadax.data import sampling


def resize_short_side(frames, size: int):
    """(T, H, W, 3) -> (T, H', W', 3) float32 with min(H', W') = size (bilinear, no antialias)."""
    shape = tf.shape(frames)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    s = float(size)
    new_h = tf.where(h < w, s, tf.floor(h / w * s))
    new_w = tf.where(h < w, tf.floor(w / h * s), s)
    out = tf.image.resize(tf.cast(frames, tf.float32),
                          tf.cast(tf.stack([new_h, new_w]), tf.int32),
                          method="bilinear", antialias=False)
    return out


def spatial_crops(frames, crop: int, num_crops: int):
    """(T, H, W, 3) -> (num_crops, T, crop, crop, 3): the centre, or 3 along the long side."""
    shape = tf.shape(frames)
    h, w = shape[1], shape[2]
    y_max, x_max = h - crop, w - crop
    if num_crops == 1:
        offsets = [(y_max // 2, x_max // 2)]
    elif num_crops == 3:
        landscape = h < w
        offsets = [(tf.where(landscape, y_max // 2, pos_y), tf.where(landscape, pos_x, x_max // 2))
                   for pos_y, pos_x in ((0, 0), (y_max // 2, x_max // 2), (y_max, x_max))]
    else:
        raise ValueError(f"data.num_crops={num_crops}: 1 or 3")
    return tf.stack([frames[:, y:y + crop, x:x + crop, :] for y, x in offsets])


def clip_views(get_frames, num_total, fps, data_cfg, clip_idx, num_clips: int, num_crops: int):
    """The `num_crops` views of temporal clip `clip_idx` -> (num_crops, T, S, S, 3) float32 in [0, 255].

    get_frames: (T,) int32 frame indices -> (T, H, W, 3) uint8 frames.
    """
    idx = sampling.clip_indices(data_cfg, num_total, fps, clip_idx=clip_idx, num_clips=num_clips)
    frames = resize_short_side(get_frames(idx), data_cfg.test_scale)
    return spatial_crops(frames, data_cfg.test_crop_size, num_crops)


def num_views(data_cfg, multi_view: bool) -> int:
    """Views per video: num_clips x num_crops, or 1 (the centre view)."""
    return data_cfg.num_clips * data_cfg.num_crops if multi_view else 1


def eval_views(get_frames, num_total, fps, data_cfg, *, multi_view: bool):
    """All views of one video -> (V, T, S, S, 3) float32 in [0, 255], view-major (see module doc)."""
    if not multi_view:
        return clip_views(get_frames, num_total, fps, data_cfg, 0, 1, 1)
    return tf.concat([clip_views(get_frames, num_total, fps, data_cfg, k, data_cfg.num_clips,
                                 data_cfg.num_crops) for k in range(data_cfg.num_clips)], axis=0)


def normalize(frames, data_cfg):
    """[0, 255] pixels (..., 3) -> (x / 255 - mean) / std in `data_cfg.dtype`."""
    mean = tf.constant(data_cfg.mean, tf.float32)
    std = tf.constant(data_cfg.std, tf.float32)
    out = (tf.cast(frames, tf.float32) / 255.0 - mean) / std
    return tf.cast(out, tf.dtypes.as_dtype(data_cfg.dtype))
