"""Named architectures of the model zoo and model construction from a config.

A model config is an `ml_collections.ConfigDict` with the fields of
`default_model_config`; `from_upstream` builds one from the original's
YAML settings (`VIDEO.BACKBONE.*`, `VIDEO.HEAD.*`, `DATA.NUM_INPUT_FRAMES`).
"""

from typing import Any, Dict, Mapping

import jax.numpy as jnp
import ml_collections

from tadax.models.classifier import VideoClassifier
from tadax.models.convnext import TAdaConvNeXtV2Backbone
from tadax.models.tadaformer import TAdaFormerBackbone

_COMMON = dict(num_classes=400, num_frames=16, image_size=224, dropout_rate=0.5,
               drop_path_rate=0.0, tadaconv_impl="fast", depthwise_impl="auto",
               dtype="float32", remat=False, rf_ratio=2, rf_kernels=(3, 3))
_TADAFORMER = dict(family="tadaformer", tubelet_size=3, tubelet_stride=2, reduction=2,
                   rf_head_dim=64, temp_enhance=False, double_tada=False)
_CONVNEXT = dict(family="tadaconvnextv2", stem_t_kernel=3, stem_t_stride=2,
                 layer_scale_init=1e-6)

ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    "tadaformer_b16": dict(_TADAFORMER, width=768, depth=12, num_heads=12, patch_size=16),
    "tadaformer_l14": dict(_TADAFORMER, width=1024, depth=24, num_heads=16, patch_size=14),
    # The quick-start model: small enough to train on a laptop CPU in minutes.
    "tadaformer_tiny": dict(_TADAFORMER, width=128, depth=2, num_heads=4, patch_size=8,
                            rf_head_dim=32, image_size=32, num_frames=8),
    "tadaconvnextv2_tiny": dict(_CONVNEXT, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768),
                                rf_head_dim=48),
    "tadaconvnextv2_small": dict(_CONVNEXT, depths=(3, 3, 27, 3), dims=(96, 192, 384, 768),
                                 rf_head_dim=48),
    "tadaconvnextv2_base": dict(_CONVNEXT, depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024),
                                rf_head_dim=64),
}


def default_model_config(arch: str, **overrides) -> ml_collections.ConfigDict:
    """The complete model config of a named architecture, with `overrides` applied."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    fields = dict(_COMMON, arch=arch)
    fields.update(ARCHITECTURES[arch])
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(f"unknown model config fields for {arch}: {sorted(unknown)}")
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def build_model(cfg: ml_collections.ConfigDict) -> VideoClassifier:
    """The Flax model a config describes; see `VideoClassifier` for how to call it."""
    dtype = jnp.dtype(cfg.dtype)
    shared = dict(rf_ratio=cfg.rf_ratio, rf_kernels=tuple(cfg.rf_kernels),
                  drop_path_rate=cfg.drop_path_rate, tadaconv_impl=cfg.tadaconv_impl,
                  depthwise_impl=cfg.depthwise_impl, remat=cfg.remat, dtype=dtype)
    if cfg.family == "tadaformer":
        backbone = TAdaFormerBackbone(
            width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, patch_size=cfg.patch_size,
            image_size=cfg.image_size, tubelet_size=cfg.tubelet_size,
            tubelet_stride=cfg.tubelet_stride, reduction=cfg.reduction,
            rf_head_dim=cfg.rf_head_dim, temp_enhance=cfg.temp_enhance,
            double_tada=cfg.double_tada, **shared)
    elif cfg.family == "tadaconvnextv2":
        backbone = TAdaConvNeXtV2Backbone(
            depths=tuple(cfg.depths), dims=tuple(cfg.dims), rf_head_dim=cfg.rf_head_dim,
            stem_t_kernel=cfg.stem_t_kernel, stem_t_stride=cfg.stem_t_stride,
            layer_scale_init=cfg.layer_scale_init, **shared)
    else:
        raise ValueError(f"unknown model family {cfg.family!r}")
    return VideoClassifier(backbone, cfg.num_classes, cfg.dropout_rate)


def from_upstream(settings: Mapping[str, Any], **overrides) -> ml_collections.ConfigDict:
    """A model config from the original's settings, e.g. the `model` block of fixtures.json.

    settings: flat dotted keys as in the original's YAML (`VIDEO.BACKBONE.DEPTH`,
    `VIDEO.HEAD.NUM_CLASSES`, `DATA.NUM_INPUT_FRAMES`, ...).
    """
    def get(key, default=None):
        return settings.get(key, default)

    meta = get("VIDEO.BACKBONE.META_ARCH")
    common = dict(
        num_classes=get("VIDEO.HEAD.NUM_CLASSES"),
        num_frames=get("DATA.NUM_INPUT_FRAMES", 16),
        dropout_rate=get("VIDEO.HEAD.DROPOUT_RATE", 0.5),
        drop_path_rate=get("VIDEO.BACKBONE.DROP_PATH", 0.0),
        rf_ratio=get("VIDEO.BACKBONE.BRANCH.ROUTE_FUNC_R", 2),
        rf_kernels=tuple(get("VIDEO.BACKBONE.BRANCH.ROUTE_FUNC_K", (3, 3))),
    )
    if meta == "VisionTransformer":
        width = get("VIDEO.BACKBONE.NUM_FEATURES")
        arch = "tadaformer_l14" if get("VIDEO.BACKBONE.PATCH_SIZE") == 14 else "tadaformer_b16"
        if get("VIDEO.BACKBONE.REQUIRE_PROJ", False):
            raise ValueError("REQUIRE_PROJ (a CLIP output projection) is not part of TAdaFormer")
        fields = dict(
            common, width=width, depth=get("VIDEO.BACKBONE.DEPTH"),
            num_heads=get("VIDEO.BACKBONE.NUM_HEADS"),
            patch_size=get("VIDEO.BACKBONE.PATCH_SIZE"),
            image_size=get("VIDEO.BACKBONE.INPUT_RES"),
            tubelet_size=get("VIDEO.BACKBONE.TUBLET_SIZE", 3),
            tubelet_stride=get("VIDEO.BACKBONE.TUBLET_STRIDE", 2),
            reduction=get("VIDEO.BACKBONE.REDUCTION", 2),
            rf_head_dim=get("VIDEO.BACKBONE.BRANCH.HEAD_DIM", 64),
            temp_enhance=bool(get("VIDEO.BACKBONE.TEMP_ENHANCE", False)),
            double_tada=bool(get("VIDEO.BACKBONE.DOUBLE_TADA", False)),
        )
    elif meta == "ConvNeXt":
        dims = tuple(get("VIDEO.BACKBONE.NUM_FILTERS"))
        depths = tuple(get("VIDEO.BACKBONE.DEPTH"))
        arch = {96: "tadaconvnextv2_small" if sum(depths) > 18 else "tadaconvnextv2_tiny",
                128: "tadaconvnextv2_base"}.get(dims[0], "tadaconvnextv2_tiny")
        fields = dict(
            common, depths=depths, dims=dims,
            rf_head_dim=get("VIDEO.BACKBONE.BRANCH.HEAD_DIM", 48),
            stem_t_kernel=get("VIDEO.BACKBONE.STEM.T_KERNEL_SIZE", 3),
            stem_t_stride=get("VIDEO.BACKBONE.STEM.T_STRIDE", 2),
            layer_scale_init=get("VIDEO.BACKBONE.LARGE_SCALE_INIT_VALUE", 1e-6),
        )
    else:
        raise ValueError(f"unsupported VIDEO.BACKBONE.META_ARCH {meta!r}")
    fields.update(overrides)
    return default_model_config(arch, **fields)
