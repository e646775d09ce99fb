"""The device mesh, sharding rules for the train state, and global batches.

The mesh has two named axes over all devices of all hosts: 'data' (pure data
parallelism) and 'fsdp' (data parallelism whose devices also split the large
parameter and optimizer-state arrays). Batches are split over both. It is
built by `jax.make_mesh`, which orders the devices by the physical topology on
TPU (so the fsdp groups, the minor axis, are neighbours on the interconnect)
and by host on GPU (an fsdp group that fits in one node stays inside it).
"""

import re
from typing import Any, Mapping, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from tadax.errors import ConfigError
from tadax.models import layout
from tadax.train.optim import path_str

BATCH_AXES = ("data", "fsdp")


def make_mesh(cfg: ml_collections.ConfigDict) -> Mesh:
    """A ('data', 'fsdp') mesh over all devices of all hosts, shape (devices / fsdp, fsdp).

    `cfg.fsdp` = -1 puts all devices on fsdp. Axes are `Auto` (the compiler
    propagates shardings from the ones we give in and out of `jax.jit`).
    """
    n = jax.device_count()
    fsdp = n if cfg.fsdp == -1 else cfg.fsdp
    if fsdp < 1 or n % fsdp:
        raise ConfigError(f"mesh.fsdp={cfg.fsdp} does not divide the {n} devices")
    return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES,
                         axis_types=(AxisType.Auto,) * len(BATCH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over all devices, other axes whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: Tuple[int, ...], fsdp: int, min_size: int, stacked: bool = False) -> P:
    """Split the largest axis divisible by `fsdp` of arrays with >= `min_size` elements.

    stacked: the leading axis runs over the blocks of a scanned stack; the
    array is split as one block's array would be, never over that axis.
    """
    if stacked:
        return P(None, *_fsdp_spec(shape[1:], fsdp, min_size))
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(mesh: Mesh, tree: Any, rules: Sequence[Tuple[str, str]],
                   fsdp_min_size: int) -> Any:
    """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs) by path rules.

    rules: `(regex, 'fsdp' | 'replicate')`, first `re.search` match on the
    '/'-joined leaf path wins; a leaf no rule matches is an error. A leaf of
    the stacked layout (`tadax/models/layout.py`) is split like one block's.
    """
    fsdp = mesh.shape["fsdp"]

    def one(path, leaf):
        name = path_str(path)
        for pattern, how in rules:
            if re.search(pattern, name):
                if how == "replicate":
                    return NamedSharding(mesh, P())
                if how == "fsdp":
                    stacked = bool(layout.STACKED_PATH.search(name))
                    return NamedSharding(mesh, _fsdp_spec(tuple(leaf.shape), fsdp, fsdp_min_size,
                                                          stacked))
                raise ValueError(f"unknown sharding {how!r} in rule {pattern!r}")
        raise ValueError(f"no sharding rule matches {name!r}")

    return jax.tree_util.tree_map_with_path(one, tree)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
    """This host's batch share -> global arrays split over the batch axes.

    local: `{name: (B_host, ...)}`; every host passes its own share, in
    process order, of the global batch `(B_host * process_count, ...)`.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out
