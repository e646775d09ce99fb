"""The model config of a zoo state dict, read off its keys and shapes."""

import re
from typing import Mapping

import ml_collections
import numpy as np

from tadax.models import default_model_config


class ArchitectureError(ValueError):
    """The weights do not describe a model we can build (message says what to set)."""


def _count(state_dict: Mapping[str, np.ndarray], pattern: str) -> int:
    found = {m.group(1) for k in state_dict for m in [re.match(pattern, k)] if m}
    return len(found)


def infer_model_config(state_dict: Mapping[str, np.ndarray], **overrides) -> ml_collections.ConfigDict:
    """Architecture of a TAdaFormer / TAdaConvNeXtV2 state dict (keys `backbone.*`, `head.*`).

    Everything that fixes a parameter shape is read from the weights; what
    the weights cannot tell (attention heads of TAdaFormer: width / 64 as in
    CLIP; the routing head width of ConvNeXt: the released recipe's) comes
    from the named architecture and can be overridden, as can the input
    frame count.
    """
    sd = state_dict
    shape = lambda k: tuple(np.shape(sd[k]))  # noqa: E731
    fields = {}
    if "head.out.weight" in sd:
        fields["num_classes"] = shape("head.out.weight")[0]
    if "backbone.class_embedding" in sd:
        width, _, tubelet, patch, _ = shape("backbone.conv1.weight")
        tokens = shape("backbone.positional_embedding")[0]
        pre = "backbone.layers.0.tada."
        middle = shape(pre + "tada_pre_proj.weight")[0]
        fields.update(
            width=width, tubelet_size=tubelet, patch_size=patch, num_heads=width // 64,
            image_size=int(round((tokens - 1) ** 0.5)) * patch,
            depth=_count(sd, r"backbone\.layers\.(\d+)\."),
            temp_enhance=len(shape(pre + "tada_pre_proj.weight")) == 5,
            double_tada=any(k.startswith("backbone.layers.0.tada2.") for k in sd),
            reduction=width // middle,
            rf_ratio=middle // shape(pre + "tadaconv.rf_func.a.weight")[0],
            rf_kernels=(shape(pre + "tadaconv.rf_func.a.weight")[2],
                        shape(pre + "tadaconv.rf_func.b.weight")[2]))
        arch = "tadaformer_l14" if patch == 14 else "tadaformer_b16"
    elif "backbone.downsample_layers.0.0.weight" in sd:
        depths = tuple(_count(sd, rf"backbone\.stages\.{i}\.(\d+)\.") for i in range(4))
        dims = tuple(shape(f"backbone.stages.{i}.0.gamma")[0] for i in range(4))
        fields.update(
            depths=depths, dims=dims,
            stem_t_kernel=shape("backbone.downsample_layers.0.0.weight")[2],
            rf_ratio=dims[0] // shape("backbone.stages.0.0.dwconv_rf.a.weight")[0],
            rf_kernels=(shape("backbone.stages.0.0.dwconv_rf.a.weight")[2],
                        shape("backbone.stages.0.0.dwconv_rf.b.weight")[2]))
        if dims[0] == 128:
            arch = "tadaconvnextv2_base"
        else:
            arch = "tadaconvnextv2_small" if sum(depths) > 18 else "tadaconvnextv2_tiny"
    else:
        raise ValueError("not a TAdaFormer or TAdaConvNeXtV2 state dict: it has neither "
                         "'backbone.class_embedding' nor 'backbone.downsample_layers.0.0.weight'")
    fields.update(overrides)
    cfg = default_model_config(arch, **fields)
    _check_routing_heads(cfg)
    return cfg


def _check_routing_heads(cfg: ml_collections.ConfigDict) -> None:
    """The routing attention's head width, which no weight shape shows, must divide its width."""
    if cfg.family == "tadaformer":
        widths = [cfg.width // cfg.reduction // cfg.rf_ratio]
    else:
        widths = [d // cfg.rf_ratio for d in cfg.dims]
    bad = [w for w in widths if w % cfg.rf_head_dim]
    if bad:
        raise ArchitectureError(
            f"routing-function widths {bad} are not multiples of rf_head_dim={cfg.rf_head_dim} "
            f"(the {cfg.arch} default); the weights cannot tell the head width, so give it: "
            f"--set rf_head_dim=N (the original's VIDEO.BACKBONE.BRANCH.HEAD_DIM)")
