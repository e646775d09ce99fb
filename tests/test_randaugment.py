"""RandAugment: each op against PIL's definition, and one draw per clip (all frames alike)."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from tadax.data import randaugment as ra

FILL = (123, 117, 104)


def _image(seed: int = 0, size: int = 24, width: int = 0) -> np.ndarray:
    """(size, width or size, 3) uint8: a smooth gradient plus noise (varied histograms,
    clear edges)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:width or size]
    base = np.stack([xx * 9, yy * 7, (xx + yy) * 4], -1) % 256
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def _ours(op: str, img: np.ndarray, level: float, sign: float = 1.0) -> np.ndarray:
    out = ra._apply_op(ra.OPS.index(op), tf.constant(img[None], tf.float32), tf.constant(level),
                       tf.constant(sign), tf.constant(FILL, tf.float32))
    return np.clip(np.round(out.numpy()[0]), 0, 255).astype(np.int32)


def _pil(op: str, img: np.ndarray, level: float, sign: float = 1.0) -> np.ndarray:
    """timm's AugmentOp for `op` at magnitude level*10, as the original runs it (bilinear here)."""
    im = Image.fromarray(img)
    w, h = im.size
    enhance = 1.0 + sign * level * 0.9
    geo = dict(resample=Image.BILINEAR, fillcolor=FILL)
    out = {
        "AutoContrast": lambda: ImageOps.autocontrast(im),
        "Equalize": lambda: ImageOps.equalize(im),
        "Invert": lambda: ImageOps.invert(im),
        "PosterizeIncreasing": lambda: ImageOps.posterize(im, 4 - int(level * 4)),
        "SolarizeIncreasing": lambda: ImageOps.solarize(im, 256 - int(level * 256)),
        "SolarizeAdd": lambda: im.point([min(255, i + int(level * 110)) if i < 128 else i
                                         for i in range(256)] * 3),
        "ColorIncreasing": lambda: ImageEnhance.Color(im).enhance(enhance),
        "ContrastIncreasing": lambda: ImageEnhance.Contrast(im).enhance(enhance),
        "BrightnessIncreasing": lambda: ImageEnhance.Brightness(im).enhance(enhance),
        "SharpnessIncreasing": lambda: ImageEnhance.Sharpness(im).enhance(enhance),
        "Rotate": lambda: im.rotate(sign * level * 30.0, **geo),
        "ShearX": lambda: im.transform(im.size, Image.AFFINE, (1, sign * level * 0.3, 0, 0, 1, 0), **geo),
        "ShearY": lambda: im.transform(im.size, Image.AFFINE, (1, 0, 0, sign * level * 0.3, 1, 0), **geo),
        "TranslateXRel": lambda: im.transform(im.size, Image.AFFINE,
                                              (1, 0, sign * level * 0.45 * w, 0, 1, 0), **geo),
        "TranslateYRel": lambda: im.transform(im.size, Image.AFFINE,
                                              (1, 0, 0, 0, 1, sign * level * 0.45 * h), **geo),
    }[op]()
    return np.asarray(out).astype(np.int32)


PIXEL_OPS = ["AutoContrast", "Equalize", "Invert", "PosterizeIncreasing", "SolarizeIncreasing",
             "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
             "SharpnessIncreasing"]
GEOMETRIC_OPS = ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


@pytest.mark.parametrize("op", PIXEL_OPS)
@pytest.mark.parametrize("level,sign", [(0.9, 1.0), (0.5, -1.0)])
def test_pixel_ops_match_pil(op, level, sign):
    img = _image()
    diff = np.abs(_ours(op, img, level, sign) - _pil(op, img, level, sign))
    assert diff.max() <= 1, f"{op}: max |ours - PIL| = {diff.max()}"
    assert (diff > 0).mean() < 0.05, f"{op}: {(diff > 0).mean():.1%} of values differ by 1"


@pytest.mark.parametrize("op", GEOMETRIC_OPS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_geometric_ops_match_pil_bilinear(op, sign):
    """On a frame wider than high, so that a translation scaled by the wrong side (TranslateY
    by 0.45 x width) or a rotation about the wrong centre does not pass."""
    img = _image(1, 20, 30)
    ours, ref = _ours(op, img, 0.8, sign), _pil(op, img, 0.8, sign)
    inner = (slice(2, -2), slice(2, -2))          # edges: fill vs interpolation at the border
    assert np.abs(ours - ref)[inner].mean() < 2.0
    assert np.abs(ours - img).mean() > 10.0       # and the op really moved the pixels


def test_parse_policy():
    p = ra.parse_policy("rand-m9-n4-mstd0.5-inc1")
    assert (p.magnitude, p.num_ops, p.magnitude_std) == (9.0, 4, 0.5)
    with pytest.raises(ValueError, match="inc1"):
        ra.parse_policy("rand-m9-n2")
    with pytest.raises(ValueError, match="unknown part"):
        ra.parse_policy("rand-m9-x3-inc1")


def _clip(frames: int = 5) -> np.ndarray:
    return np.stack([_image(i) for i in range(frames)])


def test_same_transform_on_every_frame():
    """Augmenting a clip = augmenting each frame alone with the same seed: one draw per clip."""
    clip = _clip()
    policy = ra.parse_policy("rand-m9-n4-mstd0.5-inc1")
    changed = 0
    for s in range(12):
        seed = tf.constant([7, s], tf.int64)
        whole = ra.rand_augment(tf.constant(clip, tf.float32), policy, seed, FILL).numpy()
        for t in range(len(clip)):
            alone = ra.rand_augment(tf.constant(clip[t:t + 1], tf.float32), policy, seed, FILL)
            np.testing.assert_array_equal(whole[t], alone.numpy()[0])
        changed += int(np.abs(whole - clip).mean() > 1.0)
    assert changed >= 6      # 4 ops at p=0.5: most seeds change the clip


def test_identical_frames_stay_identical_and_seed_is_deterministic():
    frame = _image(3)
    clip = tf.constant(np.stack([frame] * 4), tf.float32)
    policy = ra.parse_policy("rand-m9-n4-mstd0.5-inc1")
    seed = tf.constant([1, 2], tf.int64)
    out = ra.rand_augment(clip, policy, seed, FILL).numpy()
    assert all(np.array_equal(out[0], out[t]) for t in range(4))
    np.testing.assert_array_equal(out, ra.rand_augment(clip, policy, seed, FILL).numpy())
    outs = {ra.rand_augment(clip, policy, tf.constant([1, s], tf.int64), FILL).numpy().tobytes()
            for s in range(8)}
    assert len(outs) > 4


def test_augment_clip_numpy_entry_point():
    clip = _clip(3)
    policy = ra.parse_policy("rand-m9-n4-mstd0.5-inc1")
    a = ra.augment_clip(clip, policy, 12345, FILL)
    assert a.dtype == np.uint8 and a.shape == clip.shape
    np.testing.assert_array_equal(a, ra.augment_clip(clip, policy, 12345, FILL))


DRAWS = 1000     # clips; 4 ops each


def _draws(policy: ra.Policy, n: int = DRAWS) -> dict:
    """`ra.draw` for the seeds (5, i), i < n, in one traced call -> numpy `(n, num_ops)` arrays."""
    spec = {"ops": tf.int32, "apply": tf.bool, "levels": tf.float32, "signs": tf.float32}
    run = tf.function(lambda seeds: tf.map_fn(lambda s: ra.draw(policy, s), seeds,
                                              fn_output_signature=spec), autograph=False)
    seeds = tf.stack([tf.fill([n], tf.constant(5, tf.int64)), tf.range(n, dtype=tf.int64)], 1)
    return {k: v.numpy() for k, v in run(seeds).items()}


def _within(count: int, n: int, p: float) -> bool:
    """`count` successes of `n` trials is within 4 binomial standard deviations of n p."""
    return abs(count - n * p) <= 4 * np.sqrt(n * p * (1 - p))


def test_draws_follow_the_policy():
    """timm's RandAugment draws, over 1000 clips of `rand-m9-n4-mstd0.5-inc1` (4000 ops):
    each of the 15 ops equally likely and drawn independently for the 4 slots, each op
    applied with probability 1/2, its sign +-1 with probability 1/2, its magnitude
    N(9, 0.5) clipped to [0, 10] (mean, spread and the share clipped at 10 against numpy
    draws of that definition). Bounds: 4 standard deviations of the sample size.

    Catches: the last op never drawn (maxval len(OPS) - 1), ops applied with another
    probability, magnitudes never negated, `mstd` ignored, magnitudes not clipped to 10,
    one op drawn for all slots of a clip."""
    d = _draws(ra.parse_policy("rand-m9-n4-mstd0.5-inc1"))
    n = d["ops"].size
    counts = np.bincount(d["ops"].ravel(), minlength=len(ra.OPS))
    assert len(counts) == len(ra.OPS)
    assert all(_within(c, n, 1 / len(ra.OPS)) for c in counts), counts
    assert _within(int(np.sum(d["ops"][:, 0] == d["ops"][:, 1])), DRAWS, 1 / len(ra.OPS))
    assert _within(int(d["apply"].sum()), n, 0.5)
    assert set(np.unique(d["signs"])) == {-1.0, 1.0}
    assert _within(int((d["signs"] > 0).sum()), n, 0.5)
    ref = np.clip(np.random.default_rng(0).normal(9.0, 0.5, 10 ** 6), 0.0, 10.0) / 10.0
    levels = d["levels"].ravel()
    assert levels.min() >= 0.0 and levels.max() <= 1.0
    assert abs(levels.mean() - ref.mean()) < 4 * ref.std() / np.sqrt(n) + 4 * ref.std() / 1e3
    # The sample standard deviation's own error: sigma sqrt((kurtosis - 1) / 4n).
    kurtosis = np.mean((ref - ref.mean()) ** 4) / ref.var() ** 2
    assert abs(levels.std() - ref.std()) < 4 * ref.std() * np.sqrt((kurtosis - 1) / (4 * n))
    assert _within(int(np.sum(levels == 1.0)), n, float(np.mean(ref == 1.0)))


def test_applied_ops_compose_in_turn():
    """`rand_augment` = its drawn ops applied one after the other, each to the previous
    one's rounded output, skipping those not applied (the ops themselves are checked
    against PIL above). Seeds with at least two applied ops, on a non-square clip.

    Catches: every op applied to the input clip (only the last applied one surviving), an
    op's sign or level taken from another slot."""
    clip = np.stack([_image(i, 20, 28) for i in range(2)]).astype(np.float32)
    policy = ra.parse_policy("rand-m9-n4-mstd0.5-inc1")
    checked = 0
    for s in range(12):
        seed = tf.constant([9, s], tf.int64)
        d = {k: v.numpy() for k, v in ra.draw(policy, seed).items()}
        if d["apply"].sum() < 2:
            continue
        want = clip
        for op, on, level, sign in zip(d["ops"], d["apply"], d["levels"], d["signs"]):
            if on:
                out = ra._apply_op(int(op), tf.constant(want), tf.constant(level),
                                   tf.constant(sign), tf.constant(FILL, tf.float32))
                want = np.round(out.numpy())
        got = ra.rand_augment(tf.constant(clip), policy, seed, FILL).numpy()
        np.testing.assert_array_equal(got, want, err_msg=str(d))
        checked += 1
    assert checked >= 4
