"""Named architectures of the model zoo and model construction from a config.

A model config is an `ml_collections.ConfigDict` with the fields of
`default_model_config`; `from_upstream` builds one from the original's
YAML settings (`VIDEO.BACKBONE.*`, `VIDEO.HEAD.*`, `DATA.NUM_INPUT_FRAMES`).
"""

from typing import Any, Dict, Mapping, Tuple

import jax.numpy as jnp
import ml_collections

from tadax.models.classifier import VideoClassifier
from tadax.models.convnext import TAdaConvNeXtV2Backbone
from tadax.models.repeat import remat_name
from tadax.models.tadaformer import TAdaFormerBackbone, check_attention_impl

_COMMON = dict(num_classes=400, num_frames=16, image_size=224, dropout_rate=0.5,
               drop_path_rate=0.0, tadaconv_impl="fast", depthwise_impl="auto",
               dtype="float32", remat="none", scan_layers=False, rf_ratio=2, rf_kernels=(3, 3))
_TADAFORMER = dict(family="tadaformer", tubelet_size=3, tubelet_stride=2, reduction=2,
                   rf_head_dim=64, temp_enhance=False, double_tada=False,
                   attention_impl="xla")
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


def complete_model_config(stored: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A model config read back from a saved run or model directory, in today's terms:
    `remat` True / False -> 'full' / 'none', and the fields added since it was saved at
    their defaults (e.g. `attention_impl`: 'xla', `scan_layers`: False)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(stored).items()}
    fields["remat"] = remat_name(fields.get("remat", "none"))
    defaults = default_model_config(fields["arch"],
                                    **{k: v for k, v in fields.items() if k != "arch"})
    fields.update((k, v) for k, v in defaults.items() if k not in fields)   # stored order kept
    return ml_collections.ConfigDict(fields)


def build_model(cfg: ml_collections.ConfigDict) -> VideoClassifier:
    """The Flax model a config describes; see `VideoClassifier` for how to call it.

    `dtype` is the compute dtype ('float32' or 'bfloat16'); parameters are
    float32 either way. A TAdaFormer's `attention_impl` that cannot run here
    ('cudnn' without a CUDA GPU or in float32) is refused with a `ConfigError`.
    """
    dtype = jnp.dtype(cfg.dtype)
    shared = dict(rf_ratio=cfg.rf_ratio, rf_kernels=tuple(cfg.rf_kernels),
                  drop_path_rate=cfg.drop_path_rate, tadaconv_impl=cfg.tadaconv_impl,
                  depthwise_impl=cfg.depthwise_impl, remat=remat_name(cfg.remat),
                  scan_layers=cfg.scan_layers, dtype=dtype)
    if cfg.family == "tadaformer":
        check_attention_impl(cfg.attention_impl, dtype)
        backbone = TAdaFormerBackbone(
            width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads, patch_size=cfg.patch_size,
            image_size=cfg.image_size, tubelet_size=cfg.tubelet_size,
            tubelet_stride=cfg.tubelet_stride, reduction=cfg.reduction,
            rf_head_dim=cfg.rf_head_dim, temp_enhance=cfg.temp_enhance,
            double_tada=cfg.double_tada, attention_impl=cfg.attention_impl, **shared)
    elif cfg.family == "tadaconvnextv2":
        backbone = TAdaConvNeXtV2Backbone(
            depths=tuple(cfg.depths), dims=tuple(cfg.dims), rf_head_dim=cfg.rf_head_dim,
            stem_t_kernel=cfg.stem_t_kernel, stem_t_stride=cfg.stem_t_stride,
            layer_scale_init=cfg.layer_scale_init, **shared)
    else:
        raise ValueError(f"unknown model family {cfg.family!r}")
    return VideoClassifier(backbone, cfg.num_classes, cfg.dropout_rate)


# Model config fields and the original's settings keys they come from.
UPSTREAM_KEYS: Dict[str, Dict[str, str]] = {
    "common": dict(num_classes="VIDEO.HEAD.NUM_CLASSES", num_frames="DATA.NUM_INPUT_FRAMES",
                   dropout_rate="VIDEO.HEAD.DROPOUT_RATE", drop_path_rate="VIDEO.BACKBONE.DROP_PATH",
                   rf_ratio="VIDEO.BACKBONE.BRANCH.ROUTE_FUNC_R",
                   rf_kernels="VIDEO.BACKBONE.BRANCH.ROUTE_FUNC_K",
                   rf_head_dim="VIDEO.BACKBONE.BRANCH.HEAD_DIM"),
    "tadaformer": dict(width="VIDEO.BACKBONE.NUM_FEATURES", depth="VIDEO.BACKBONE.DEPTH",
                       num_heads="VIDEO.BACKBONE.NUM_HEADS", patch_size="VIDEO.BACKBONE.PATCH_SIZE",
                       image_size="VIDEO.BACKBONE.INPUT_RES",
                       tubelet_size="VIDEO.BACKBONE.TUBLET_SIZE",
                       tubelet_stride="VIDEO.BACKBONE.TUBLET_STRIDE",
                       reduction="VIDEO.BACKBONE.REDUCTION",
                       temp_enhance="VIDEO.BACKBONE.TEMP_ENHANCE",
                       double_tada="VIDEO.BACKBONE.DOUBLE_TADA"),
    "tadaconvnextv2": dict(depths="VIDEO.BACKBONE.DEPTH", dims="VIDEO.BACKBONE.NUM_FILTERS",
                           stem_t_kernel="VIDEO.BACKBONE.STEM.T_KERNEL_SIZE",
                           stem_t_stride="VIDEO.BACKBONE.STEM.T_STRIDE",
                           layer_scale_init="VIDEO.BACKBONE.LARGE_SCALE_INIT_VALUE"),
}


def upstream_key(family: str, field: str) -> str:
    """The original's settings key of a model config field of `family`."""
    return UPSTREAM_KEYS[family].get(field) or UPSTREAM_KEYS["common"][field]


def upstream_fields(settings: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """(named architecture, the model config fields the settings give).

    settings: flat dotted keys as in the original's YAML (`VIDEO.BACKBONE.DEPTH`,
    ...), e.g. from `tadax.weights.upstream.load_upstream_settings`. Keys that
    are absent or empty are left out: the named architecture's defaults apply.
    """
    meta = settings.get("VIDEO.BACKBONE.META_ARCH")
    if meta == "VisionTransformer":
        family = "tadaformer"
        if settings.get("VIDEO.BACKBONE.REQUIRE_PROJ"):
            raise ValueError("REQUIRE_PROJ (a CLIP output projection) is not part of TAdaFormer")
    elif meta == "ConvNeXt":
        family = "tadaconvnextv2"
    else:
        raise ValueError(f"unsupported VIDEO.BACKBONE.META_ARCH {meta!r}")
    fields = {}
    for field, key in dict(UPSTREAM_KEYS["common"], **UPSTREAM_KEYS[family]).items():
        value = settings.get(key)
        if value is None:
            continue
        if isinstance(value, list):
            value = tuple(value)
        if field in ("temp_enhance", "double_tada"):
            value = bool(value)
        fields[field] = value
    if family == "tadaformer":
        arch = "tadaformer_l14" if fields.get("patch_size") == 14 else "tadaformer_b16"
    else:
        dims, depths = fields.get("dims", (96,)), fields.get("depths", ())
        if dims[0] == 128:
            arch = "tadaconvnextv2_base"
        else:
            arch = "tadaconvnextv2_small" if sum(depths) > 18 else "tadaconvnextv2_tiny"
    return arch, fields


def from_upstream(settings: Mapping[str, Any], **overrides) -> ml_collections.ConfigDict:
    """A model config from the original's settings, e.g. the `model` block of fixtures.json.

    settings: flat dotted keys as in the original's YAML (`VIDEO.BACKBONE.DEPTH`,
    `VIDEO.HEAD.NUM_CLASSES`, `DATA.NUM_INPUT_FRAMES`, ...); what they lack
    comes from the named architecture they describe.
    """
    arch, fields = upstream_fields(settings)
    fields.update(overrides)
    return default_model_config(arch, **fields)
