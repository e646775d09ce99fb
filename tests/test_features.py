"""Video embeddings: the model's `features` method for both families, and the
`python -m tadax.features` command on a tiny prepared split and a folder of videos."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tadax.models import build_model, default_model_config


def tiny_models():
    former = default_model_config("tadaformer_tiny", num_classes=8)
    convnext = default_model_config("tadaconvnextv2_tiny", depths=(1, 1),
                                    dims=(16, 32), rf_head_dim=8, image_size=32,
                                    num_frames=4, num_classes=5)
    return {"tadaformer": former, "tadaconvnextv2": convnext}


def random_variables(model, cfg, seed=0):
    """Random parameters of a model (shapes from `jax.eval_shape`, no init compile) and
    positive BatchNorm variances, so that every branch computes something non-trivial."""
    video = jax.ShapeDtypeStruct((1, cfg.num_frames, cfg.image_size, cfg.image_size, 3),
                                 jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), video)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return (0.5 + rng.uniform(size=s.shape)).astype(np.float32)
        return (0.2 * rng.normal(size=s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _layer_norm(x, params, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * params["scale"] + params["bias"]


@pytest.mark.parametrize("family", ["tadaformer", "tadaconvnextv2"])
def test_features_method_pooled_and_pre_pool(family):
    cfg = tiny_models()[family]
    model = build_model(cfg)
    variables = random_variables(model, cfg)
    video = np.random.default_rng(1).normal(size=(2, cfg.num_frames, 32, 32, 3)).astype(np.float32)

    def run(v, x):
        pooled, pre = model.apply(v, x, pre_pool=True, method=model.features)
        return (model.apply(v, x), model.apply(v, x, method=model.features), pooled, pre,
                model.apply(v, pooled, False, method=lambda m, f, t: m.head(f, t)))

    logits, pooled, pooled2, pre, head = jax.jit(run)(variables, video)
    np.testing.assert_allclose(head, logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(pooled2, pooled, atol=1e-6)
    pre = np.asarray(pre, np.float64)
    backbone = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                      variables["params"]["backbone"])
    if family == "tadaformer":
        grid = cfg.image_size // cfg.patch_size
        assert pre.shape == (2, cfg.num_frames // 2, 1 + grid * grid, cfg.width)
        want = _layer_norm(pre[:, :, 0].mean(1), backbone["ln_post"], 1e-5)
    else:
        assert pre.shape == (2, cfg.num_frames // 2, 4, 4, cfg.dims[-1])
        want = _layer_norm(pre.mean((1, 2, 3)), backbone["norm"], 1e-6)
    np.testing.assert_allclose(pooled, want, atol=1e-5)
