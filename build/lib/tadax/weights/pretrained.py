"""Image-pretrained starting points, re-expressed as (partial) state dicts of the original.

Each translator takes the state dict of a public image checkpoint and returns
`(state_dict, dropped)`: the same weights under the original TAdaConv code's
key names and layouts (2D kernels inflated in time), and the source keys
deliberately left out (CLIP's output projection, ImageNet heads, the text
tower). The result is then mapped like a zoo checkpoint; the parameters it
does not cover are the video-specific new ones, listed in `NEW_PARAMETERS`.
"""

import re
from typing import Dict, List, Mapping, Tuple

import numpy as np

from tadax.weights.mapping import WeightMismatchError

# Parameters that no image checkpoint holds: they keep their fresh
# initialisation (TAdaFormer's zero-initialised branches, ConvNeXt's routing
# functions and temporal aggregation norms, the video head).
NEW_PARAMETERS = {
    "tadaformer": re.compile(r"(^|/)(tada2?|head)/"),
    "tadaconvnextv2": re.compile(r"(^|/)(dwconv_rf|norm_avgpool|head)/"),
}

_CLIP_DROPPED = re.compile(r"^(proj|text_model\..*|logit_scale|visual_projection\..*"
                           r"|text_projection\..*|.*position_ids)$")


def _inflate_centre(kernel_2d: np.ndarray, taps: int) -> np.ndarray:
    """`(O, I, kh, kw)` -> `(O, I, taps, kh, kw)` with the kernel in the centre tap, zeros elsewhere."""
    out = np.zeros(kernel_2d.shape[:2] + (taps,) + kernel_2d.shape[2:], np.float32)
    out[:, :, taps // 2] = kernel_2d
    return out


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def from_openai_clip(state_dict: Mapping[str, np.ndarray], tubelet_size: int
                     ) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """OpenAI CLIP (`visual.*`, `transformer.resblocks.N`) -> TAdaFormer backbone keys."""
    out: Dict[str, np.ndarray] = {}
    dropped: List[str] = []
    for key, value in state_dict.items():
        if not key.startswith("visual."):
            dropped.append(key)
            continue
        name = key[len("visual."):]
        if _CLIP_DROPPED.match(name):
            dropped.append(key)
            continue
        name = re.sub(r"^transformer\.resblocks\.(\d+)\.", r"layers.\1.", name)
        value = _f32(value)
        if name == "conv1.weight":
            value = _inflate_centre(value, tubelet_size)
        out["backbone." + name] = value
    return out, dropped


_HF_RENAMES = [
    (r"^embeddings\.class_embedding$", "class_embedding"),
    (r"^embeddings\.patch_embedding\.weight$", "conv1.weight"),
    (r"^embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^pre_layrnorm\.", "ln_pre."),
    (r"^post_layernorm\.", "ln_post."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"layers.\1.ln_1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"layers.\1.ln_2."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"layers.\1.mlp.c_fc."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"layers.\1.mlp.c_proj."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"layers.\1.attn.out_proj."),
]
_HF_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def from_hf_clip(state_dict: Mapping[str, np.ndarray], tubelet_size: int, source: str
                 ) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Hugging Face CLIP (`vision_model.*`, safetensors layout) -> TAdaFormer backbone keys.

    The separate q/k/v projections are packed into `in_proj_weight` /
    `in_proj_bias` (rows q, k, v), as `nn.MultiheadAttention` holds them.
    """
    out: Dict[str, np.ndarray] = {}
    dropped: List[str] = []
    unknown: List[str] = []
    qkv: Dict[Tuple[str, str], Dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        # CLIPModel files prefix the tower with 'vision_model.'; CLIPVisionModel
        # files of recent transformers releases do not.
        name = key[len("vision_model."):] if key.startswith("vision_model.") else key
        if _CLIP_DROPPED.match(name):
            dropped.append(key)
            continue
        m = _HF_QKV.match(name)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = _f32(value)
            continue
        for pattern, repl in _HF_RENAMES:
            if re.match(pattern, name):
                name = re.sub(pattern, repl, name)
                break
        else:
            unknown.append(key)
            continue
        value = _f32(value)
        if name == "conv1.weight":
            value = _inflate_centre(value, tubelet_size)
        out["backbone." + name] = value
    if unknown:
        raise WeightMismatchError(source, unused=unknown)
    for (layer, leaf), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightMismatchError(source, missing=[
                f"encoder.layers.{layer}.self_attn.{p}_proj.{leaf}" for p in "qkv" if p not in parts])
        out[f"backbone.layers.{layer}.attn.in_proj_{leaf}"] = np.concatenate(
            [parts["q"], parts["k"], parts["v"]], axis=0)
    return out, dropped


def from_convnext(state_dict: Mapping[str, np.ndarray], stem_t_kernel: int
                  ) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Official ConvNeXt ImageNet weights (`torch.load(f)['model']`) -> TAdaConvNeXtV2 keys.

    The stem kernel goes to the centre tap of the temporal stem, the
    downsampling kernels gain a time axis of 1, the depthwise kernels take
    TAdaConv's `(1, 1, C, 1, kh, kw)` layout; the ImageNet head is dropped.
    """
    out: Dict[str, np.ndarray] = {}
    dropped: List[str] = []
    for key, value in state_dict.items():
        if key.startswith("head."):
            dropped.append(key)
            continue
        value = _f32(value)
        if key == "downsample_layers.0.0.weight":
            value = _inflate_centre(value, stem_t_kernel)
        elif re.fullmatch(r"downsample_layers\.[123]\.1\.weight", key):
            value = value[:, :, None]
        elif key.endswith("dwconv.weight"):
            value = value[None, None]
        elif key.endswith("dwconv.bias"):
            value = value[None, None]
        out["backbone." + key] = value
    return out, dropped
