"""The two layouts of the backbones' repeated blocks in a variables tree, and conversion.

  unrolled  one subtree per block: `backbone/layers_{i}/...` (TAdaFormer),
            `backbone/stages_{s}_{j}/...` (TAdaConvNeXtV2); the original's
            names, what the importer writes and exports (`scan_layers=False`);
  stacked   one subtree per scanned group whose leaves have a leading axis
            over its blocks: `backbone/layers/...` `(depth, ...)`,
            `backbone/stages_{s}/...` `(depths[s], ...)` (`scan_layers=True`).

The conversion works on any tree keyed like the model's variables: params,
batch_stats, the optimizer's moments, the EMA, a whole train state. Every
mapping found under a key `backbone` is converted; leaves may be numpy or
JAX arrays or `jax.ShapeDtypeStruct`s. Converting to the layout a tree
already has returns it unchanged.
"""

import re
from typing import Any, Dict, List, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

_BLOCK_KEY = re.compile(r"^(layers|stages_\d+)_(\d+)$")   # unrolled: group name, index
_GROUP_KEY = re.compile(r"^(layers|stages_\d+)$")          # stacked
# A '/'-joined path (params, optimizer state, ...) inside a stacked group.
STACKED_PATH = re.compile(r"(?:^|/)backbone/(layers|stages_\d+)/")


class LayoutError(ValueError):
    """A tree whose blocks are neither completely unrolled nor stacked."""


def _all_jax_arrays(tree: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(tree)
    return bool(leaves) and all(isinstance(leaf, jax.Array) for leaf in leaves)


@jax.jit
def _stack_arrays(blocks: List[Any]) -> Any:
    """The blocks' trees of JAX arrays stacked in one program (not one per leaf)."""
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *blocks)


@jax.jit
def _unstack_arrays(group: Any) -> List[Any]:
    """A stacked group of JAX arrays split into its blocks' trees in one program."""
    count = jax.tree_util.tree_leaves(group)[0].shape[0]
    return [jax.tree_util.tree_map(lambda leaf: leaf[i], group) for i in range(count)]


def _stack_leaves(*leaves):
    first = leaves[0]
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype)
    if all(isinstance(leaf, np.ndarray) for leaf in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def _unstack_leaf(leaf, index: int):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype)
    return leaf[index]


def _stack_backbone(backbone: Mapping) -> Dict:
    out, groups = {}, {}
    for key, value in backbone.items():
        match = _BLOCK_KEY.match(key)
        if match:
            groups.setdefault(match.group(1), {})[int(match.group(2))] = value
        else:
            out[key] = value
    for name, blocks in groups.items():
        if name in out:
            raise LayoutError(f"backbone holds both {name} and {name}_<i>")
        if sorted(blocks) != list(range(len(blocks))):
            raise LayoutError(f"backbone/{name}_<i>: blocks {sorted(blocks)} are not 0..n-1")
        ordered = [blocks[i] for i in range(len(blocks))]
        out[name] = (_stack_arrays(ordered) if _all_jax_arrays(ordered)
                     else jax.tree_util.tree_map(_stack_leaves, *ordered))
    return out


def _unstack_backbone(backbone: Mapping) -> Dict:
    out = {}
    for key, value in backbone.items():
        if not _GROUP_KEY.match(key):
            out[key] = value
            continue
        sizes = {int(leaf.shape[0]) for leaf in jax.tree_util.tree_leaves(value)}
        if len(sizes) != 1:
            raise LayoutError(f"backbone/{key}: leading axes {sorted(sizes)} differ")
        count = sizes.pop()
        blocks = (_unstack_arrays(value) if _all_jax_arrays(value) else
                  [jax.tree_util.tree_map(lambda leaf, i=i: _unstack_leaf(leaf, i), value)
                   for i in range(count)])
        for i, block in enumerate(blocks):
            out[f"{key}_{i}"] = block
    return out


def _convert(tree: Any, convert_backbone) -> Any:
    if isinstance(tree, Mapping):
        return {k: convert_backbone(v) if k == "backbone" and isinstance(v, Mapping)
                else _convert(v, convert_backbone) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):   # optax states are NamedTuples
        return type(tree)(*[_convert(v, convert_backbone) for v in tree])
    if isinstance(tree, (list, tuple)):
        return type(tree)(_convert(v, convert_backbone) for v in tree)
    return tree


def stacked(tree: Any) -> Any:
    """`tree` in the stacked layout (`scan_layers=True`)."""
    return _convert(tree, _stack_backbone)


def unrolled(tree: Any) -> Any:
    """`tree` in the unrolled layout (`scan_layers=False`), the original's names."""
    return _convert(tree, _unstack_backbone)


def to_layout(tree: Any, scan_layers: bool) -> Any:
    """`tree` in the layout of a model built with `scan_layers`."""
    return stacked(tree) if scan_layers else unrolled(tree)


def layout_of(tree: Any) -> Optional[bool]:
    """True if `tree`'s backbone blocks are stacked, False if unrolled, None if it has none."""
    found = set()

    def walk(node):
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key == "backbone" and isinstance(value, Mapping):
                    found.update(bool(_GROUP_KEY.match(k)) for k in value
                                 if _GROUP_KEY.match(k) or _BLOCK_KEY.match(k))
                else:
                    walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(tree)
    if len(found) > 1:
        raise LayoutError("the tree holds both stacked and unrolled backbone blocks")
    return found.pop() if found else None


def block_paths(path: str, count: int) -> List[str]:
    """The unrolled paths of the `count` blocks a stacked '/'-joined path holds
    (`backbone/layers/attn/...` -> `backbone/layers_{i}/attn/...`); `[path]` if not stacked."""
    match = STACKED_PATH.search(path)
    if match is None:
        return [path]
    head, tail = path[:match.end(1)], path[match.end(1):]
    return [f"{head}_{i}{tail}" for i in range(count)]
