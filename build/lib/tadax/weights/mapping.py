"""Name and layout mapping between the original's state dicts and our Flax variables.

PyTorch names become Flax paths by rule: '.' separates modules, list indices
join the module name with '_' (`layers.3` -> `layers_3`, `stages.2.5` ->
`stages_2_5`), the ConvNeXt stem / downsampling `Sequential`s get names
(`downsample_layers.0.0` -> `stem_conv`, `downsample_layers.2.1` ->
`downsample_2_conv`), `weight` becomes `kernel` (convs, linears) or `scale`
(norms), BatchNorm running statistics go to the `batch_stats` collection.

Layouts: Linear `(out, in)` <-> Dense `(in, out)`; Conv3d `(out, in, kt, kh, kw)`
<-> Conv `(kt, kh, kw, in, out)`, or `(kt, in, out)` for the temporal convs
of the routing functions (their spatial kernel is 1x1); TAdaConv
`(1, 1, out, in/groups, kh, kw)` <-> `(kh, kw, in/groups, out)`, bias
`(1, 1, out)` <-> `(out,)`.
"""

import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

Path = Tuple[str, ...]
# Buffers of the original with no counterpart here: BatchNorm's step counter
# (unused by the original, whose BatchNorm momentum is fixed at 0.1).
IGNORED_SUFFIXES = (".num_batches_tracked",)
_STEM = {"0": "stem_conv", "1": "stem_norm"}
_DOWNSAMPLE = {"0": "norm", "1": "conv"}


class WeightMismatchError(ValueError):
    """A state dict does not match the model: lists every offending key."""

    def __init__(self, source: str, unused: Iterable[str] = (), missing: Iterable[str] = (),
                 bad_shapes: Iterable[str] = ()):
        self.unused, self.missing, self.bad_shapes = list(unused), list(missing), list(bad_shapes)
        lines = [f"{source} does not match the model:"]
        for title, keys in (("source keys with no model parameter", self.unused),
                            ("model parameters not filled", self.missing),
                            ("shape mismatches", self.bad_shapes)):
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines.extend(f"    {k}" for k in keys)
        super().__init__("\n".join(lines))


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str = "module.") -> Dict[str, np.ndarray]:
    """Drops a `module.` (DistributedDataParallel) prefix from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def _module_path(parts: List[str]) -> List[str]:
    """Torch module names -> Flax module names (list indices merged, ConvNeXt stem named)."""
    if "downsample_layers" in parts:
        i = parts.index("downsample_layers")
        stage, item = parts[i + 1], parts[i + 2]
        name = _STEM[item] if stage == "0" else f"downsample_{stage}_{_DOWNSAMPLE[item]}"
        return _module_path(parts[:i]) + [name] + _module_path(parts[i + 3:])
    out: List[str] = []
    for part in parts:
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return out


def torch_key_to_flax(key: str) -> Optional[Tuple[str, Path]]:
    """`backbone.layers.0.ln_1.weight` -> ('params', path-with-leaf-placeholder).

    Returns None for ignored buffers. The leaf 'weight' is returned as
    'weight' and resolved to 'kernel' or 'scale' by `_resolve_leaf`, which
    knows the tensor's rank.
    """
    if key.endswith(IGNORED_SUFFIXES):
        return None
    parts = key.split(".")
    leaf, modules = parts[-1], parts[:-1]
    if leaf in ("in_proj_weight", "in_proj_bias"):
        modules, leaf = modules + ["in_proj"], leaf[len("in_proj_"):]
    path = _module_path(modules)
    if leaf == "running_mean":
        return "batch_stats", tuple(path + ["mean"])
    if leaf == "running_var":
        return "batch_stats", tuple(path + ["var"])
    return "params", tuple(path + [leaf])


def _resolve_leaf(path: Path, ndim: int) -> Path:
    if path[-1] != "weight":
        return path
    return path[:-1] + ("scale" if ndim == 1 else "kernel",)


def flax_path(key: str, ndim: int) -> Optional[Path]:
    """Full Flax path `(collection, module..., leaf)` of a torch key holding an `ndim`-rank tensor."""
    mapped = torch_key_to_flax(key)
    if mapped is None:
        return None
    collection, path = mapped
    return (collection,) + _resolve_leaf(path, ndim)


def torch_to_flax_array(value: np.ndarray, leaf: str, target_shape: Tuple[int, ...]) -> np.ndarray:
    """Re-lays a PyTorch tensor (its Flax leaf name given) into the layout of `target_shape`."""
    value = np.asarray(value)
    if leaf not in ("kernel", "bias"):
        return value
    if value.ndim == 2:
        return value.T
    if value.ndim == 5 and len(target_shape) == 5:
        return value.transpose(2, 3, 4, 1, 0)
    if value.ndim == 5 and len(target_shape) == 3:
        return value[:, :, :, 0, 0].transpose(2, 1, 0)
    if value.ndim == 6:
        return value[0, 0].transpose(2, 3, 1, 0)
    if value.ndim == 3 and len(target_shape) == 1:
        return value.reshape(-1)
    return value


def flax_to_torch_array(value: np.ndarray, leaf: str, sibling_kernel_ndim: Optional[int]) -> np.ndarray:
    """Inverse of `torch_to_flax_array` for a Flax leaf (its name and its kernel's rank)."""
    value = np.asarray(value)
    if leaf == "kernel":
        if value.ndim == 2:
            return value.T
        if value.ndim == 3:
            return value.transpose(2, 1, 0)[:, :, :, None, None]
        if value.ndim == 4:
            return value.transpose(3, 2, 0, 1)[None, None]
        if value.ndim == 5:
            return value.transpose(4, 3, 0, 1, 2)
    if leaf == "bias" and sibling_kernel_ndim == 4:
        return value.reshape(1, 1, -1)
    return value


def flatten(tree: Mapping, prefix: Path = ()) -> Dict[Path, object]:
    """Nested dict -> {path tuple: leaf}."""
    out: Dict[Path, object] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[Path, object]) -> Dict:
    """{path tuple: leaf} -> nested dict."""
    out: Dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def torch_to_flax(state_dict: Mapping[str, np.ndarray], target: Mapping, source: str,
                  strict: bool = True) -> Dict:
    """Maps a state dict onto a Flax variable tree.

    Args:
      state_dict: `{torch key: array}` in the original's layout (no `module.` prefix).
      target: the model's variables or their shapes (e.g. from `jax.eval_shape`),
        `{'params': ..., 'batch_stats': ...}`; only shapes are read.
      source: the file name, for error messages.
      strict: every source key must be used and every target leaf filled. With
        strict False, unfilled target leaves are left out of the result (the
        caller keeps their fresh initialisation); unused keys are still errors.
    Returns:
      `{'params': ..., 'batch_stats': ...}` of numpy arrays (collections that
      the target has).
    Raises:
      WeightMismatchError listing unused keys, unfilled parameters and shape
      mismatches, before anything is returned.
    """
    targets = {(col,) + p: leaf for col, tree in target.items() for p, leaf in flatten(tree).items()}
    filled: Dict[Path, np.ndarray] = {}
    unused, bad = [], []
    for key, value in state_dict.items():
        full = flax_path(key, np.ndim(value))
        if full is None:
            continue
        if full not in targets:
            unused.append(key)
            continue
        want = tuple(targets[full].shape)
        array = torch_to_flax_array(value, full[-1], want)
        if tuple(array.shape) != want:
            bad.append(f"{key}: {tuple(np.shape(value))} -> {'/'.join(full)} {want}")
            continue
        filled[full] = array
    missing = ["/".join(p) for p in targets if p not in filled] if strict else []
    if unused or missing or bad:
        raise WeightMismatchError(source, unused, missing, bad)
    return unflatten(filled)


def _torch_module_name(path: Path) -> List[str]:
    """Flax module path -> torch module names (inverse of `_module_path`)."""
    out: List[str] = []
    for name in path:
        m = re.fullmatch(r"downsample_(\d)_(norm|conv)", name)
        if name in ("stem_conv", "stem_norm"):
            out += ["downsample_layers", "0", "0" if name == "stem_conv" else "1"]
        elif m:
            out += ["downsample_layers", m.group(1), "0" if m.group(2) == "norm" else "1"]
        elif re.fullmatch(r"(layers|stages)(_\d+)+", name):
            out += name.split("_")
        else:
            out.append(name)
    return out


def flax_to_torch(variables: Mapping) -> Dict[str, np.ndarray]:
    """Flax variables -> a state dict loadable by the original code (`model_state`).

    BatchNorms get a `num_batches_tracked` of 0 (the original never reads it).
    """
    params = flatten(variables.get("params", {}))
    stats = flatten(variables.get("batch_stats", {}))
    out: Dict[str, np.ndarray] = {}
    for path, value in params.items():
        modules, leaf = list(path[:-1]), path[-1]
        sibling = params.get(tuple(modules) + ("kernel",))
        sibling_ndim = np.ndim(sibling) if sibling is not None else None
        array = flax_to_torch_array(np.asarray(value), leaf, sibling_ndim)
        names = _torch_module_name(tuple(modules))
        if names and names[-1] == "in_proj":
            out[".".join(names[:-1] + [f"in_proj_{'weight' if leaf == 'kernel' else leaf}"])] = array
            continue
        torch_leaf = "weight" if leaf in ("kernel", "scale") else leaf
        out[".".join(names + [torch_leaf])] = array
    for path, value in stats.items():
        names = _torch_module_name(tuple(path[:-1]))
        leaf = {"mean": "running_mean", "var": "running_var"}[path[-1]]
        out[".".join(names + [leaf])] = np.asarray(value)
        out[".".join(names + ["num_batches_tracked"])] = np.array(0, np.int64)
    return out
