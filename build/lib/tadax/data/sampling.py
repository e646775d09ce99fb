"""Which frames of a video make a clip: segment- and interval-based sampling (TF ops).

Both follow the original's `_segment_based_sampling` / `_interval_based_sampling`:

* segment: the video's N frames are cut into T equal segments; training takes
  a uniformly random position in each segment, evaluation clip k of n takes
  `seg_start + seg_len * (k + 1) / n` (the segment centre when n = 1); the
  position is rounded and clamped to [0, N-1].
* interval: a window of T x rate frames (x fps / target_fps when a target
  rate is set) is placed at a uniformly random start in training, at
  `max_start * k / n` for eval clip k of n (the middle when n = 1); T
  positions evenly spaced from the window start to its last frame, floored
  and clamped to [0, N-1].

`seed` arguments are `(2,)` int32 stateless-random seeds.
"""

import tensorflow as tf


def segment_indices(num_total, num_frames: int, *, seed=None, clip_idx=0, num_clips: int = 1):
    """(T,) int32 frame indices into a video of `num_total` frames.

    `seed` given: training (random position per segment); otherwise view
    `clip_idx` of `num_clips`.
    """
    n = tf.cast(num_total, tf.float32)
    bounds = tf.linspace(0.0, n, num_frames + 1)
    lo, hi = bounds[:-1], bounds[1:]
    if seed is not None:
        u = tf.random.stateless_uniform([num_frames], seed=seed)
        pos = lo + (hi - lo) * u
    elif num_clips == 1:
        pos = (lo + hi) / 2.0
    else:
        k = tf.cast(clip_idx, tf.float32)
        pos = lo + (hi - lo) * (k + 1.0) / float(num_clips)
    pos = tf.clip_by_value(pos, 0.0, n - 1.0)
    return tf.cast(tf.round(pos), tf.int32)


def interval_indices(num_total, fps, num_frames: int, rate: int, target_fps: float = 0.0, *,
                     seed=None, clip_idx=0, num_clips: int = 1):
    """(T,) int32 frame indices: T frames `rate` apart (at `target_fps` if > 0) in a video
    of `num_total` frames at `fps`.

    `seed` given: training (random window); otherwise window `clip_idx` of `num_clips`.
    """
    n = tf.cast(num_total, tf.float32)
    length = float(num_frames * rate)
    if target_fps:
        length = length * tf.cast(fps, tf.float32) / float(target_fps)
    length = tf.cast(length, tf.float32)
    max_start = tf.maximum(n - length, 0.0)
    if seed is not None:
        start = tf.random.stateless_uniform([], seed=seed) * max_start
    elif num_clips == 1:
        start = max_start / 2.0
    else:
        start = max_start * tf.cast(clip_idx, tf.float32) / float(num_clips)
    if num_frames == 1:
        pos = tf.reshape(start + (length - 1.0) / 2.0, [1])
    else:
        pos = tf.linspace(start, start + length - 1.0, num_frames)
    pos = tf.clip_by_value(pos, 0.0, n - 1.0)
    return tf.cast(tf.floor(pos), tf.int32)


def clip_indices(data_cfg, num_total, fps, *, seed=None, clip_idx=0, num_clips: int = 1):
    """(T,) int32 frame indices by `data_cfg.sampling`; see the two samplers above."""
    if data_cfg.sampling == "segment":
        return segment_indices(num_total, data_cfg.num_frames, seed=seed, clip_idx=clip_idx,
                               num_clips=num_clips)
    if data_cfg.sampling == "interval":
        return interval_indices(num_total, fps, data_cfg.num_frames, data_cfg.sampling_rate,
                                data_cfg.target_fps, seed=seed, clip_idx=clip_idx,
                                num_clips=num_clips)
    raise ValueError(f"data.sampling={data_cfg.sampling!r}: 'segment' or 'interval'")


def shuffle_order(num_frames: int, seed):
    """(T,) int32 random permutation (the time-order ablation `shuffle_frames`)."""
    keys = tf.random.stateless_uniform([num_frames], seed=seed)
    return tf.argsort(keys)
