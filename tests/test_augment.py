"""Training augmentation against its definitions: the random resized crop's distribution
(torchvision's `RandomResizedCrop.get_params`, simulated in numpy), its fallback, and
`train_clip`'s crop, flip, grayscale and RandAugment fill on frames whose pixels encode
their coordinates.

Random draws are checked over many seeds in one traced call (`tf.map_fn`), with bounds
of 4 standard deviations of the sample size (and of the reference's own sample)."""

import math

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from tadax.data import augment, randaugment
from tadax.data.config import CLIP_MEAN, data_config
from tadax.prepare.encode import jpeg_bytes

N = 1000    # draws per distribution


def _seeds(n: int, stream: int = 3):
    return tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(stream, tf.int64))], 1)


def _windows(height, width, scale, ratio, n=N):
    """(n, 4) `crop_window` results (y, x, h, w) for the seeds (i, 3), i < n."""
    run = tf.function(lambda seeds: tf.map_fn(
        lambda s: augment.crop_window(s, height, width, scale, ratio), seeds,
        fn_output_signature=tf.int32), autograph=False)
    return run(_seeds(n)).numpy()


def torchvision_windows(rng, n, height, width, scale, ratio):
    """(n, 4) windows (y, x, h, w) drawn as torchvision's RandomResizedCrop.get_params:
    10 attempts of area ~ U(scale) x H W and log aspect ~ U(log ratio), w = round(sqrt(area
    aspect)), h = round(sqrt(area / aspect)), the first that fits placed uniformly
    (randint(0, H - h + 1)); else the centre crop with the aspect clamped to the ratio
    range."""
    target = height * width * rng.uniform(*scale, size=(n, 10))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, 10)))
    w = np.round(np.sqrt(target * aspect)).astype(int)      # round half to even, as round()
    h = np.round(np.sqrt(target / aspect)).astype(int)
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = np.argmax(ok, axis=1)
    w, h = w[np.arange(n), first], h[np.arange(n), first]
    y = rng.integers(0, np.maximum(height - h + 1, 1))      # rows that fit none: replaced
    x = rng.integers(0, np.maximum(width - w + 1, 1))
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    fallback = ~ok.any(axis=1)
    y[fallback], x[fallback] = (height - fh) // 2, (width - fw) // 2
    h[fallback], w[fallback] = fh, fw
    return np.stack([y, x, h, w], axis=1)


def _stats(windows, height, width):
    """{name: (n,) values} of crop windows: area fraction, log aspect w/h, and where in its
    free range the crop starts (y / (H - h), x / (W - w); NaN where there is no room)."""
    y, x, h, w = windows.T.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"area": h * w / (height * width), "log_aspect": np.log(w / h),
                "rel_y": np.where(h < height, y / (height - h), np.nan),
                "rel_x": np.where(w < width, x / (width - w), np.nan)}


@pytest.mark.parametrize("height,width,scale,ratio", [
    (240, 320, (0.08, 1.0), (0.75, 1.333)),      # the recipes' crop: some attempts rejected
    (100, 100, (0.08, 0.5), (0.75, 1.333)),      # every first attempt fits: the raw draws
])
def test_crop_window_is_distributed_as_torchvision(height, width, scale, ratio):
    """Over 1000 seeds, windows inside the frame whose area fraction, log aspect ratio and
    relative position have the mean and spread of torchvision's (100000 numpy draws of its
    definition), the area fraction spans the configured range, and area and aspect are
    correlated as in the reference (independent draws; only rejection couples them).

    Catches: the crop always at its minimum area (or maximum), area drawn on a log scale,
    aspect drawn uniformly instead of log-uniformly or from the area's random numbers,
    positions drawn outside the free range or x from y's random number."""
    windows = _windows(height, width, scale, ratio)
    y, x, h, w = windows.T
    assert np.all((y >= 0) & (x >= 0) & (h > 0) & (w > 0) & (y + h <= height) & (x + w <= width))
    got = _stats(windows, height, width)
    ref = _stats(torchvision_windows(np.random.default_rng(0), 100_000, height, width,
                                     scale, ratio), height, width)
    for name in got:
        g, r = got[name][~np.isnan(got[name])], ref[name][~np.isnan(ref[name])]
        sd = r.std()
        tol_mean = 4 * sd / np.sqrt(len(g)) + 4 * sd / np.sqrt(len(r))
        assert abs(g.mean() - r.mean()) < tol_mean, (name, g.mean(), r.mean(), tol_mean)
        # The sample sd's own error: sd sqrt((kurtosis - 1) / 4n).
        kurtosis = np.mean((r - r.mean()) ** 4) / sd ** 4
        tol_sd = 4 * sd * np.sqrt((kurtosis - 1) / (4 * len(g)))
        assert abs(g.std() - sd) < tol_sd, (name, g.std(), sd, tol_sd)
    # U(a, b) over 1000 draws: the extremes come within 1% of the range of its ends
    # (each missed with probability 0.99^1000 < 1e-4); rounding w and h moves the area
    # fraction by at most (w + h + 1/2) / 2 / HW.
    a, b = scale
    slack = 0.01 * (b - a) + (height + width + 0.5) / 2 / (height * width)
    assert got["area"].min() < a + slack and got["area"].max() > min(b, 0.95) - slack
    assert got["area"].min() > a - slack and got["area"].max() <= 1.0
    corr = lambda s: np.corrcoef(s["area"], s["log_aspect"])[0, 1]  # noqa: E731
    assert abs(corr(got) - corr(ref)) < 4 / np.sqrt(N) + 4 / np.sqrt(100_000)
    both = ~np.isnan(got["rel_y"]) & ~np.isnan(got["rel_x"])
    assert abs(np.corrcoef(got["rel_y"][both], got["rel_x"][both])[0, 1]) < 4 / np.sqrt(both.sum())


def test_crop_positions_are_uniform_and_independent():
    """A 36 x 36 crop of a 40 x 40 frame (area fraction 0.81, aspect 1) starts at each of the
    5 x 5 positions (y, x) in {0..4}^2 with probability 1/25 (torchvision: randint(0, H - h
    + 1)): the counts over 1000 seeds pass Pearson's chi-square test of uniformity at a
    false-alarm rate of 1e-4.

    Catches: the last position never drawn (randint(0, H - h)), x drawn from y's random
    number, y and x swapped."""
    windows = _windows(40, 40, (0.81, 0.81), (1.0, 1.0))
    assert np.all(windows[:, 2:] == 36)
    counts = np.zeros((5, 5), int)
    np.add.at(counts, (windows[:, 0], windows[:, 1]), 1)
    chi2 = np.sum((counts - N / 25) ** 2 / (N / 25))
    assert chi2 < scipy.stats.chi2.ppf(1 - 1e-4, 24), counts    # uniform: exceeded w.p. 1e-4


@pytest.mark.parametrize("height,width,want", [
    (20, 200, (0, 86, 20, 27)),     # wider than 4/3: full height, width round(20 x 1.333)
    (200, 20, (86, 0, 27, 20)),     # taller than 3/4: full width, height round(20 / 0.75)
])
def test_crop_fallback_is_the_centre_with_the_aspect_clamped(height, width, want):
    """No attempt fits (areas of at least 90%, aspect within [3/4, 4/3], on a 1:10 frame):
    torchvision's fallback, the centred crop of the frame with its aspect clamped to the
    ratio range, worked out by hand.

    Catches: the clamp to the wrong end of the range, the centre offset of y used for x."""
    windows = _windows(height, width, (0.9, 1.0), (0.75, 1.333), n=8)
    assert {tuple(w) for w in windows.tolist()} == {want}


# ---------------------------------------------------------------- train_clip

H, W, CROP = 48, 64, 16


def coded_frame() -> np.ndarray:
    """(48, 64, 3) uint8: red 4 x column, green 5 x row, blue 128 (smooth: JPEG keeps it
    within a few levels)."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx * 4, yy * 5, np.full_like(xx, 128)], -1).astype(np.uint8)


def _train_clips(cfg, n, frames=None):
    """(clips (n, T, S, S, 3), flipped (n,)) of `train_clip` on the coded frame's JPEG for the
    seeds (i, 3), i < n."""
    jpeg = jpeg_bytes(coded_frame() if frames is None else frames, 100)
    jpegs = tf.constant([jpeg] * cfg.num_frames)
    run = tf.function(lambda seeds: tf.map_fn(
        lambda s: augment.train_clip(jpegs, cfg, s), seeds,
        fn_output_signature=(tf.float32, tf.bool)), autograph=False)
    clips, flipped = run(_seeds(n))
    return clips.numpy(), flipped.numpy()


def _locate(clip_frame: np.ndarray, frame: np.ndarray):
    """(y, x, mirrored, errors): where the CROP x CROP window of `frame` that `clip_frame` is
    (or the mirror image of) lies, read from the coded colours (red rises to the right,
    green downwards), and the mean absolute differences from the windows at (y, x) and at
    its four neighbours."""
    mirrored = bool(clip_frame[0, 0, 0] > clip_frame[0, -1, 0])
    target = clip_frame[:, ::-1] if mirrored else clip_frame
    y = int(round(target[..., 1].mean() / 5 - (CROP - 1) / 2))
    x = int(round(target[..., 0].mean() / 4 - (CROP - 1) / 2))
    errors = [np.abs(frame[j:j + CROP, i:i + CROP] - target).mean()
              for j, i in ((y, x), (y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
              if 0 <= j <= H - CROP and 0 <= i <= W - CROP]
    return y, x, mirrored, errors


def test_train_clip_cuts_the_configured_window_and_flips_it():
    """With area fraction 256 / (48 x 64) and aspect 1 the window is 16 x 16, resized to
    16: each clip is exactly a window of the frame (up to JPEG at quality 100: < 0.5 level
    on average; a window one pixel off differs by 4 or 5 levels in one channel, 4/3 or 5/3
    on average), the mirror image where `flipped` says so. Over 60 seeds the
    windows spread over the frame and half are flipped (within 4 binomial sds).

    Catches: the frame's height and width swapped in the crop, the scale and ratio
    arguments swapped, a vertical flip, a flip with another probability or not reported."""
    cfg = data_config(dataset="kinetics400", num_frames=2, train_crop_size=CROP,
                      train_scale=(CROP * CROP / (H * W),) * 2, ratio=(1.0, 1.0),
                      randaugment="", grayscale_p=0.0, flip=True)
    n = 60
    clips, flipped = _train_clips(cfg, n)
    frame = tf.io.decode_jpeg(jpeg_bytes(coded_frame(), 100)).numpy().astype(np.float64)
    found = []
    for clip, f in zip(clips, flipped):
        np.testing.assert_array_equal(clip[0], clip[1])
        y, x, mirrored, errors = _locate(clip[0], frame)
        assert errors[0] < 0.5 and min(errors[1:]) > 1.0 and mirrored == f, (y, x, f, errors)
        found.append((y, x))
    ys, xs = np.array(found).T
    assert len(set(xs)) >= 20 and len(set(ys)) >= 15 and ys.max() >= 28 and xs.max() >= 42
    assert abs(flipped.sum() - n / 2) <= 4 * np.sqrt(n / 4)


def test_grayscale_is_the_luma_and_drawn_with_its_probability():
    """grayscale_p = 1: every clip is ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B) on all
    three channels, computed from the ungrayed clip of the same seed; grayscale_p = 0.25:
    a quarter of 200 clips (within 4 binomial sds).

    Catches: the luma weights in BGR order, `<` turned into `>` (probability 1 - p)."""
    base = dict(dataset="kinetics400", num_frames=1, train_crop_size=CROP,
                train_scale=(0.2, 1.0), ratio=(0.75, 1.333), randaugment="", flip=False)
    colour, _ = _train_clips(data_config(**base, grayscale_p=0.0), 8)
    gray, _ = _train_clips(data_config(**base, grayscale_p=1.0), 8)
    luma = colour @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=1e-3)
    n, p = 200, 0.25
    clips, _ = _train_clips(data_config(**base, grayscale_p=p), n)
    is_gray = np.all(np.abs(clips - clips[..., :1]) < 1e-3, axis=(1, 2, 3, 4))
    assert abs(is_gray.sum() - n * p) <= 4 * np.sqrt(n * p * (1 - p)), is_gray.sum()


def test_randaugment_fills_with_the_normalisation_mean(monkeypatch):
    """RandAugment's geometric ops fill what they move in with timm's `img_mean`, round(255
    x mean) of the normalisation mean (CLIP's: 123, 117, 104). Only TranslateXRel at
    magnitude 10 is drawn here (the op table cut to it), on a black frame: a translated
    clip has whole columns of exactly that colour.

    Catches: the fill computed from the std, or in [0, 1] instead of [0, 255]."""
    monkeypatch.setattr(randaugment, "OPS", ("TranslateXRel",))
    cfg = data_config(dataset="kinetics400", num_frames=1, train_crop_size=CROP,
                      train_scale=(1.0, 1.0), ratio=(0.75, 1.333),
                      randaugment="rand-m10-n1-mstd0-inc1",
                      grayscale_p=0.0, flip=False, mean=CLIP_MEAN)
    clips, _ = _train_clips(cfg, 6, frames=np.zeros((H, W, 3), np.uint8))
    want = [round(255 * m) for m in CLIP_MEAN]
    assert want == [123, 117, 104]
    moved = 0
    for clip in clips[:, 0]:
        filled = np.all(clip == np.array(want, np.float32), axis=-1)     # (S, S)
        if clip.max() == 0:
            continue                              # the op was not applied to this clip
        moved += 1
        assert filled.all(axis=0).sum() >= 6, clip[..., 0]   # 0.45 x 16 = 7.2 columns
    assert moved >= 1
