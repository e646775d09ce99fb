"""The model config of a zoo state dict, read off its keys and shapes."""

import re
from typing import Any, Collection, Dict, List, Mapping, Tuple

import ml_collections
import numpy as np

from tadax.models import default_model_config
from tadax.models.registry import upstream_key

# Settings no weight shape shows, per family, and where their default comes from.
UNSEEN_SETTINGS: Dict[str, Dict[str, str]] = {
    "tadaformer": dict(num_heads="width // 64, CLIP's head width",
                       rf_head_dim="the released TAdaFormers' value",
                       tubelet_stride="the released TAdaFormers' value",
                       num_frames="the released recipes' value",
                       dropout_rate="the released recipes' value; training only",
                       drop_path_rate="the released recipes' value; training only"),
    "tadaconvnextv2": dict(rf_head_dim="the released recipe's value",
                           stem_t_stride="the released TAdaConvNeXtV2s' value",
                           num_frames="the released recipes' value",
                           dropout_rate="the released recipes' value; training only",
                           drop_path_rate="the released recipes' value; training only"),
}


class ArchitectureError(ValueError):
    """The weights do not describe a model we can build (message says what to set)."""


def _count(state_dict: Mapping[str, np.ndarray], pattern: str) -> int:
    found = {m.group(1) for k in state_dict for m in [re.match(pattern, k)] if m}
    return len(found)


def read_off_weights(state_dict: Mapping[str, np.ndarray]
                     ) -> Tuple[str, Dict[str, Any], Dict[str, str]]:
    """(named architecture, the model config fields the keys and shapes fix, and for each
    of those fields the keys and shapes it was read from) of a TAdaFormer /
    TAdaConvNeXtV2 state dict (keys `backbone.*`, `head.*`)."""
    sd = state_dict
    shape = lambda k: tuple(np.shape(sd[k]))  # noqa: E731
    seen = lambda k: f"{k} {shape(k)}"  # noqa: E731
    fields: Dict[str, Any] = {}
    evidence: Dict[str, str] = {}
    if "head.out.weight" in sd:
        fields["num_classes"] = shape("head.out.weight")[0]
        evidence["num_classes"] = f"rows of {seen('head.out.weight')}"
    if "backbone.class_embedding" in sd:
        width, _, tubelet, patch, _ = shape("backbone.conv1.weight")
        tokens = shape("backbone.positional_embedding")[0]
        pre = "backbone.layers.0.tada."
        middle = shape(pre + "tada_pre_proj.weight")[0]
        rf_a, rf_b = pre + "tadaconv.rf_func.a.weight", pre + "tadaconv.rf_func.b.weight"
        fields.update(
            width=width, tubelet_size=tubelet, patch_size=patch,
            image_size=int(round((tokens - 1) ** 0.5)) * patch,
            depth=_count(sd, r"backbone\.layers\.(\d+)\."),
            temp_enhance=len(shape(pre + "tada_pre_proj.weight")) == 5,
            double_tada=any(k.startswith("backbone.layers.0.tada2.") for k in sd),
            reduction=width // middle,
            rf_ratio=middle // shape(rf_a)[0],
            rf_kernels=(shape(rf_a)[2], shape(rf_b)[2]))
        conv1 = seen("backbone.conv1.weight")
        evidence.update(
            width=f"output channels of {conv1}", tubelet_size=f"temporal kernel of {conv1}",
            patch_size=f"spatial kernel of {conv1}",
            image_size=f"sqrt(tokens - 1) x patch_size, tokens from "
                       f"{seen('backbone.positional_embedding')}",
            depth="the blocks backbone.layers.N present",
            temp_enhance=f"{seen(pre + 'tada_pre_proj.weight')}: "
                         + ("a 3D convolution" if fields["temp_enhance"] else "a linear layer"),
            double_tada="backbone.layers.0.tada2.* " + ("present" if fields["double_tada"]
                                                        else "absent"),
            reduction=f"width / output channels of {seen(pre + 'tada_pre_proj.weight')}",
            rf_ratio=f"tada_pre_proj's channels / output channels of {seen(rf_a)}",
            rf_kernels=f"temporal kernels of {seen(rf_a)} and {seen(rf_b)}")
        arch = "tadaformer_l14" if patch == 14 else "tadaformer_b16"
        evidence["arch"] = f"TAdaFormer (backbone.class_embedding), patch size {patch}"
    elif "backbone.downsample_layers.0.0.weight" in sd:
        depths = tuple(_count(sd, rf"backbone\.stages\.{i}\.(\d+)\.") for i in range(4))
        dims = tuple(shape(f"backbone.stages.{i}.0.gamma")[0] for i in range(4))
        stem = "backbone.downsample_layers.0.0.weight"
        rf_a, rf_b = ("backbone.stages.0.0.dwconv_rf.a.weight",
                      "backbone.stages.0.0.dwconv_rf.b.weight")
        fields.update(
            depths=depths, dims=dims, stem_t_kernel=shape(stem)[2],
            rf_ratio=dims[0] // shape(rf_a)[0], rf_kernels=(shape(rf_a)[2], shape(rf_b)[2]))
        evidence.update(
            depths="the blocks backbone.stages.S.J present in each stage S",
            dims="channels of backbone.stages.S.0.gamma",
            stem_t_kernel=f"temporal kernel of {seen(stem)}",
            rf_ratio=f"dims[0] / output channels of {seen(rf_a)}",
            rf_kernels=f"temporal kernels of {seen(rf_a)} and {seen(rf_b)}")
        if dims[0] == 128:
            arch = "tadaconvnextv2_base"
        else:
            arch = "tadaconvnextv2_small" if sum(depths) > 18 else "tadaconvnextv2_tiny"
        evidence["arch"] = (f"TAdaConvNeXtV2 (backbone.downsample_layers), dims {dims}, "
                            f"{sum(depths)} blocks")
    else:
        raise ValueError("not a TAdaFormer or TAdaConvNeXtV2 state dict: it has neither "
                         "'backbone.class_embedding' nor 'backbone.downsample_layers.0.0.weight'")
    return arch, fields, evidence


def infer_model_config(state_dict: Mapping[str, np.ndarray], **overrides) -> ml_collections.ConfigDict:
    """Architecture of a TAdaFormer / TAdaConvNeXtV2 state dict (keys `backbone.*`, `head.*`).

    Everything that fixes a parameter shape is read from the weights
    (`read_off_weights`); `overrides` that contradict them are refused. What the
    weights cannot tell (`UNSEEN_SETTINGS`: attention heads of TAdaFormer,
    width / 64 as in CLIP; routing head width; temporal strides; frames; dropout
    rates) comes from `overrides` or else the named architecture;
    `unseen_settings` lists the values so taken.
    """
    arch, fields, _ = read_off_weights(state_dict)
    conflicts = [f"{k}: weights {fields[k]!r}, given {v!r}" for k, v in overrides.items()
                 if k in fields and _normal(fields[k]) != _normal(v)]
    if conflicts:
        raise ArchitectureError("the settings contradict the weights (" + "; ".join(conflicts) + ")")
    if "width" in fields:
        fields["num_heads"] = fields["width"] // 64
    fields.update(overrides)
    cfg = default_model_config(arch, **fields)
    _check_routing_heads(cfg)
    return cfg


def _normal(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def unseen_settings(cfg: ml_collections.ConfigDict, given: Collection[str]) -> List[str]:
    """One line per setting of `cfg` that no weight shows and that was not `given`.

    Each names the value taken, where it comes from, and how to give it
    instead (the original's settings key through `--upstream-config`, or `--set`).
    """
    lines = []
    for field, origin in UNSEEN_SETTINGS[cfg.family].items():
        if field in given:
            continue
        lines.append(f"note: {field}={cfg[field]!r} is not in the weights (default: {origin}); "
                     f"if the model was trained otherwise, pass --upstream-config YOUR.yaml "
                     f"({upstream_key(cfg.family, field)}) or --set {field}=VALUE")
    return lines


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
            f"--set rf_head_dim=N, or --upstream-config with the original's settings file "
            f"(VIDEO.BACKBONE.BRANCH.HEAD_DIM)")
