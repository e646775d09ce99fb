"""A converted model against the original PyTorch code on the same weights, block by block.

The original's code comes from a user's checkout (`tadax.bench.original`): its
model is built from its settings file for the architecture
(`tadax.bench.original.SETTINGS_FILES`) with every setting the converted model
config fixes put over it, and the zoo state dict is loaded into it strictly.
Both run one random clip `(1, T, S, S, 3)` (T and S the model config's frames
and image size) in eval mode; the output of every block (TAdaFormer's
`backbone.layers.i`, TAdaConvNeXtV2's `backbone.stages.s.j`), the pooled
features and the log-probabilities are compared. Needs torch and einops.
"""

import re
from typing import Any, Dict, List, Mapping

import jax
import ml_collections
import numpy as np

from tadax.bench import original as upstream
from tadax.bench.recipes import BenchError
from tadax.models import build_model
from tadax.models.registry import UPSTREAM_KEYS

# A tadax block's module name -> the original's.
_BLOCK = re.compile(r"layers_(\d+)|stages_(\d+)_(\d+)")


def original_overrides(cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
    """The original's settings that build the model `cfg` describes (over its settings file)."""
    out = {key: list(cfg[field]) if isinstance(cfg[field], tuple) else cfg[field]
           for field, key in dict(UPSTREAM_KEYS["common"], **UPSTREAM_KEYS[cfg.family]).items()}
    width = cfg.width if cfg.family == "tadaformer" else cfg.dims[-1]
    out.update({"VIDEO.BACKBONE.NUM_OUT_FEATURES": width,
                "DATA.TRAIN_CROP_SIZE": cfg.image_size, "DATA.TEST_CROP_SIZE": cfg.image_size})
    return out


def _original_name(flax_name: str) -> str:
    m = _BLOCK.fullmatch(flax_name)
    if m.group(1) is not None:
        return f"backbone.layers.{m.group(1)}"
    return f"backbone.stages.{m.group(2)}.{m.group(3)}"


def _to_tadax_layout(name: str, out: np.ndarray) -> np.ndarray:
    """A block output of the original -> tadax's layout: TAdaFormer's tokens
    (L, B T', D) -> (B T', L, D); ConvNeXt's (B, C, T, H, W) -> (B, T, H, W, C)."""
    if name.startswith("backbone.layers."):
        return out.transpose(1, 0, 2)
    return out.transpose(0, 2, 3, 4, 1)


def block_errors(path: str, cfg: ml_collections.ConfigDict,
                 state_dict: Mapping[str, np.ndarray], variables: Mapping[str, Any],
                 seed: int = 0) -> Dict[str, Any]:
    """Per-block max |tadax - original| on one random clip (see the module doc).

    Returns {'original', 'settings_file', 'clip', 'seed', 'notes', 'rows'}, rows
    [{'output', 'max_abs_error', 'max_abs'}] in network order ('max_abs': the
    original's largest value there), then 'features' and 'log_probs'. Raises
    BenchError for a checkout, package or weights that do not fit.
    """
    import torch

    if cfg.arch not in upstream.SETTINGS_FILES:
        raise BenchError(f"--against-original: no settings file of the original for "
                                  f"{cfg.arch}")
    handles, notes = upstream.import_original(path)
    settings_file = upstream.SETTINGS_FILES[cfg.arch]
    settings = upstream.resolve_settings(path, settings_file, original_overrides(cfg))
    model, _ = handles["build_model"](upstream.Settings(settings))
    result = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                    for k, v in state_dict.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BenchError(
            f"--against-original: the original's {settings_file} with this model's settings "
            f"does not take these weights (missing {result.missing_keys[:5]}, unexpected "
            f"{result.unexpected_keys[:5]})")
    model.eval()

    rng = np.random.default_rng(seed)
    clip = rng.normal(size=(1, cfg.num_frames, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    theirs: Dict[str, np.ndarray] = {}
    blocks = [(name, module) for name, module in model.named_modules()
              if re.fullmatch(r"backbone\.layers\.\d+|backbone\.stages\.\d+\.\d+", name)]
    handles_ = [module.register_forward_hook(
        lambda m, args, out, name=name: theirs.__setitem__(name, out.detach().numpy().copy()))
        for name, module in blocks]
    try:
        with torch.no_grad():
            probs, features = model(torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 4, 1, 2, 3))))
    finally:
        for h in handles_:
            h.remove()

    flax_cfg = ml_collections.ConfigDict(cfg.to_dict())
    flax_cfg.update(scan_layers=False, dtype="float32", remat="none")
    flax_model = build_model(flax_cfg)
    only_blocks = lambda module, method: (  # noqa: E731
        method == "__call__" and _BLOCK.fullmatch(module.name or "") is not None)

    def run(v, x):
        logits, state = flax_model.apply(v, x, capture_intermediates=only_blocks,
                                         mutable=["intermediates"])
        return logits, flax_model.apply(v, x, method=flax_model.features), state["intermediates"]

    logits, ours_features, inter = jax.jit(run)(dict(variables), clip)
    ours = {_original_name(name): np.asarray(value["__call__"][0])
            for name, value in inter["backbone"].items() if _BLOCK.fullmatch(name)}
    rows: List[Dict[str, Any]] = []
    for name, _ in blocks:
        want = _to_tadax_layout(name, theirs[name])
        rows.append({"output": name, "max_abs_error": float(np.max(np.abs(ours[name] - want))),
                     "max_abs": float(np.max(np.abs(want)))})
    log_ours = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float32)))
    log_theirs = np.log(np.maximum(probs.numpy(), np.finfo(np.float32).tiny))
    for name, a, b in (("features", np.asarray(ours_features), features.numpy()),
                       ("log_probs", log_ours, log_theirs)):
        rows.append({"output": name, "max_abs_error": float(np.max(np.abs(a - b))),
                     "max_abs": float(np.max(np.abs(b)))})
    return {"original": str(path), "settings_file": settings_file, "clip": list(clip.shape),
            "seed": seed, "notes": notes, "rows": rows}
