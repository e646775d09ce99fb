"""On-device mixup / cutmix (tadax/train/mixup.py) against a numpy reference, and the
statistics of its random draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tadax.data.config import data_config
from tadax.train import mixup


def numpy_box(lam, cy, cx, height, width):
    """timm's `rand_bbox` for one given centre: sides int(size * sqrt(1 - lam)), clipped."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    return (int(np.clip(cy - ch // 2, 0, height)), int(np.clip(cy + ch // 2, 0, height)),
            int(np.clip(cx - cw // 2, 0, width)), int(np.clip(cx + cw // 2, 0, width)))


def numpy_mix(video, labels, num_classes, lam, cutmix, box):
    """The host-side reference, group by group: mixup blends a clip with the mirrored one,
    cutmix pastes the mirrored clip's box on every frame; targets lam / 1 - lam."""
    g = len(lam)
    out, targets = [], []
    for v, y, l, c, (y0, y1, x0, x1) in zip(np.split(video, g), np.split(labels, g), lam,
                                            cutmix, box):
        if c:
            m = v.copy()
            m[:, :, y0:y1, x0:x1] = v[::-1, :, y0:y1, x0:x1]
        else:
            m = v * np.float32(l) + v[::-1] * np.float32(1 - l)
        onehot = np.eye(num_classes, dtype=np.float32)[y]
        out.append(m)
        targets.append(onehot * l + onehot[::-1] * (1 - l))
    return np.concatenate(out), np.concatenate(targets)


def test_cut_box_matches_timm_including_clipped_boxes():
    height, width = 14, 10
    lams = np.array([0.05, 0.3, 0.5, 0.77, 0.99], np.float32)
    centres = [(0, 0), (13, 9), (0, 9), (7, 5), (2, 8)]
    for lam in lams:
        for cy, cx in centres:
            got = mixup.cut_box(jnp.array([lam]), jnp.array([cy]), jnp.array([cx]), height, width)
            assert tuple(np.asarray(got)[0].tolist()) == numpy_box(float(lam), cy, cx, height,
                                                                   width), (lam, cy, cx)


def test_mix_equals_the_numpy_reference():
    """Four groups of four clips: mixup, cutmix with a box clipped at the corner, an unmixed
    group, cutmix with a box clipped at the left only; every frame gets the same box and
    the targets sum to 1."""
    rng = np.random.default_rng(0)
    video = rng.normal(size=(16, 3, 8, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 7, 16).astype(np.int32)
    cutmix = np.array([False, True, False, True])
    box = np.array([numpy_box(0.3, 0, 0, 8, 6), numpy_box(0.6, 7, 5, 8, 6), (0, 0, 0, 0),
                    numpy_box(0.5, 3, 2, 8, 6)])
    assert box[1].tolist() == [5, 8, 4, 6]                 # clipped at the bottom-right corner
    assert box[3].tolist() == [1, 5, 0, 4]
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    lam = np.where(cutmix, 1 - area / 48, [0.3, 0.0, 1.0, 0.0]).astype(np.float32)
    params = {"lam": jnp.asarray(lam), "cutmix": jnp.asarray(cutmix),
              "box": jnp.asarray(box, jnp.int32)}
    got_video, got_targets = jax.jit(mixup.mix, static_argnums=2)(video, labels, 7, params)
    want_video, want_targets = numpy_mix(video, labels, 7, lam, cutmix, box)
    np.testing.assert_allclose(np.asarray(got_video), want_video, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_targets), want_targets, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got_targets).sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(got_video)[8:12], video[8:12])
    for g in (1, 3):
        changed = np.any(np.asarray(got_video)[4 * g:4 * g + 4] != video[4 * g:4 * g + 4], -1)
        assert np.all(changed == changed[:, :1]) and changed[0, 0].sum() == area[g]


def test_mix_keeps_bfloat16_clips():
    video = jnp.ones((4, 2, 4, 4, 3), jnp.bfloat16)
    params = {"lam": jnp.array([0.25]), "cutmix": jnp.array([False]),
              "box": jnp.zeros((1, 4), jnp.int32)}
    out, _ = mixup.mix(video, jnp.arange(4), 4, params)
    assert out.dtype == jnp.bfloat16


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_draw_statistics(mixup_alpha, cutmix_alpha):
    """20000 groups in one draw: mixed with `mixup_prob`, cutmix with `mixup_switch_prob`
    among the mixed (when both are on), Beta-distributed mixup coefficients, cutmix
    coefficients equal to the uncovered area, unmixed groups untouched, box centres drawn
    independently (catches: the column drawn with the row's key)."""
    c = data_config(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, mixup_prob=0.7,
                    mixup_switch_prob=0.3)
    n, height, width = 20000, 16, 12
    if not mixup_alpha:
        width = 16        # square, as training clips are (see the box centres below)
    draw = jax.jit(lambda seed: mixup.draw(jax.random.key(seed), c, n, height, width))
    d = jax.device_get(draw(3))
    lam, cut, box = d["lam"], d["cutmix"], d["box"]
    area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    mixed = cut | (lam < 1)
    assert abs(mixed.mean() - 0.7) < 0.02
    switch = 0.3 if mixup_alpha and cutmix_alpha else float(cutmix_alpha > 0)
    assert abs(cut[mixed].mean() - switch) < 0.02
    np.testing.assert_array_equal(area[~cut], 0)
    np.testing.assert_allclose(lam[cut], 1 - area[cut] / (height * width), rtol=1e-6)
    assert np.all((box[:, 0] <= box[:, 1]) & (box[:, 2] <= box[:, 3]))
    assert box.min() >= 0 and box[:, :2].max() <= height and box[:, 2:].max() <= width
    blend = mixed & ~cut
    if mixup_alpha:       # Beta(0.8, 0.8): mean 1/2, variance 1 / (4 (2a + 1)) = 0.0962
        assert abs(lam[blend].mean() - 0.5) < 0.01
        assert abs(lam[blend].var() - 0.25 / 2.6) < 0.005
    if cutmix_alpha:      # corrected coefficients distributed as timm's (numpy, 200000 draws)
        r = np.random.default_rng(0)
        cut_rat = np.sqrt(1 - r.beta(cutmix_alpha, cutmix_alpha, 200000))
        sides = []
        for size in (height, width):
            centre, half = r.integers(size, size=len(cut_rat)), (size * cut_rat).astype(int) // 2
            sides.append(np.clip(centre + half, 0, size) - np.clip(centre - half, 0, size))
        ref = 1 - sides[0] * sides[1] / (height * width)
        assert abs(lam[cut].mean() - ref.mean()) < 0.01
        assert abs(lam[cut].std() - ref.std()) < 0.01
        # The centre's row and column are two independent randint (timm): among boxes
        # clipped on no side, whose centre is their midpoint, they are uncorrelated
        # (4 / sqrt(n)). On a square clip a column drawn with the row's key puts every box
        # on the diagonal.
        y0, y1, x0, x1 = box[cut].T
        inner = (y0 > 0) & (y1 < height) & (x0 > 0) & (x1 < width)
        r = np.corrcoef(y0[inner] + y1[inner], x0[inner] + x1[inner])[0, 1]
        assert inner.sum() > 300 and abs(r) < 4 / np.sqrt(inner.sum()), (inner.sum(), r)
    np.testing.assert_array_equal(jax.device_get(draw(3))["lam"], lam)
    assert np.mean(jax.device_get(draw(4))["lam"] == lam) < 0.5
