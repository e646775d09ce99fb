"""Every released architecture's state dict maps one-to-one onto our Flax parameters.

Uses `../shared/manifests` (keys, shapes and parameter counts of the real
zoo files and of the CLIP / ConvNeXt starting points) and `jax.eval_shape`,
so no memory is spent on the full-size models.
"""

import json

import numpy as np
import pytest

from conftest import require, shared_dir
from tadax import convert
from tadax.models import default_model_config
from tadax.weights import mapping
from tadax.weights.infer import infer_model_config

CLASSES = {"k400": 400, "k710": 710, "ssv2": 174}
SHAPE_FIELDS = ("family", "num_classes", "width", "depth", "num_heads", "patch_size",
                "image_size", "temp_enhance", "double_tada", "reduction", "rf_ratio",
                "rf_kernels", "depths", "dims", "stem_t_kernel")


def _manifests(name):
    path = shared_dir() / "manifests" / name
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def _shapes_only(entries):
    """Manifest entries -> {key: zero-stride array of that shape} (no memory)."""
    return {key: np.broadcast_to(np.zeros((), np.float32), tuple(shape))
            for key, shape, _dtype in entries}


def _named_config(manifest_name):
    arch, dataset = manifest_name.rsplit("_", 1)
    ssv2 = dataset == "ssv2" and arch.startswith("tadaformer")
    extra = dict(temp_enhance=True, double_tada=True) if ssv2 else {}
    return default_model_config(arch, num_classes=CLASSES[dataset], **extra)


ZOO = _manifests("zoo_state_dict_manifests.json")
PRETRAINED = _manifests("pretrained_init_manifests.json")


@pytest.mark.parametrize("name", sorted(ZOO) or [pytest.param("absent", marks=pytest.mark.skip(
    reason="../shared/manifests not found"))])
def test_zoo_manifest_maps_one_to_one(name):
    require(shared_dir() / "manifests", "the manifests")
    entry = ZOO[name]
    cfg = _named_config(name)
    state = _shapes_only(entry["state_dict"])
    target = convert.init_shapes(cfg)
    variables = mapping.torch_to_flax(state, target, name)  # strict: raises on any leftover
    n_params = sum(int(np.prod(v.shape)) for v in mapping.flatten(variables["params"]).values())
    assert n_params == entry["num_params"]
    inferred = infer_model_config(state)
    for field in SHAPE_FIELDS:
        if field in cfg:
            assert inferred[field] == cfg[field], field
    back = mapping.flax_to_torch(variables)
    assert set(back) == set(state)
    assert all(back[k].shape == state[k].shape for k in state)


STARTING_POINTS = {
    "openai_clip_vit_b16_visual": ("clip", "tadaformer_b16"),
    "openai_clip_vit_l14_visual": ("clip", "tadaformer_l14"),
    "convnext_tiny_in1k": ("convnext", "tadaconvnextv2_tiny"),
    "convnext_tiny_in22k": ("convnext", "tadaconvnextv2_tiny"),
    "convnext_small_in1k": ("convnext", "tadaconvnextv2_small"),
    "convnext_small_in22k": ("convnext", "tadaconvnextv2_small"),
    "convnext_base_in1k": ("convnext", "tadaconvnextv2_base"),
    "convnext_base_in22k": ("convnext", "tadaconvnextv2_base"),
}


@pytest.mark.parametrize("name", sorted(PRETRAINED) or [pytest.param(
    "absent", marks=pytest.mark.skip(reason="../shared/manifests not found"))])
def test_starting_point_covers_all_but_new_parameters(name):
    kind, arch = STARTING_POINTS[name]
    cfg = default_model_config(arch)
    state = _shapes_only(PRETRAINED[name]["state_dict"])
    loaded, dropped, fresh = convert.map_pretrained(kind, state, cfg, name,
                                                    convert.init_shapes(cfg))
    expected_dropped = {"visual.proj"} if kind == "clip" else {"head.weight", "head.bias"}
    assert set(dropped) == expected_dropped
    assert fresh and all(("tada" in p or "rf" in p or "norm_avgpool" in p or "/head/" in p)
                         for p in fresh)
    n_loaded = sum(int(np.prod(v.shape)) for v in mapping.flatten(loaded).values())
    n_source = sum(int(np.prod(s.shape)) for k, s in state.items() if k not in expected_dropped)
    # The 2D stem kernel becomes a 3-tap temporal kernel (centre tap + two zero taps).
    stem = next(s for k, s in state.items()
                if k.endswith(("conv1.weight", "downsample_layers.0.0.weight")))
    assert n_loaded == n_source + 2 * int(np.prod(stem.shape))
