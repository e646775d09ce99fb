"""A stack of identical blocks, unrolled or scanned, with a rematerialisation policy.

Blocks are modules called as `block(x, drop_rate, train) -> x` with the
same shape in and out. Two layouts of their variables (see
`tadax/models/layout.py`):

  unrolled  one module per block, named `NAME_{i}` (the original's names):
            XLA compiles every block, so compile time grows with depth;
  scanned   one module `NAME` run by `nn.scan`: every variable gets a leading
            axis over the blocks, the block is compiled once.

Per-block drop-path rates enter the scan as a scanned input and the
'params' and 'drop_path' rng streams are split per block, so a scanned
stack draws other random numbers than an unrolled one (other initial
weights, other drop-path masks); applied to the same weights without drop
path, both compute the same function.
"""

from typing import Dict, Optional, Sequence, Type

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# remat: what a block keeps from its forward pass for the backward pass.
REMAT_POLICIES: Dict[str, Optional[object]] = {
    "none": None,                                                  # everything (no remat)
    "full": jax.checkpoint_policies.nothing_saveable,              # only the block's input
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # + its weight matmuls
}


def remat_name(value) -> str:
    """A model config's `remat` -> a policy name; `False` / `True` (saved configs from before
    the policies) read as 'none' / 'full'."""
    if isinstance(value, bool):
        return "full" if value else "none"
    if value not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {value!r}; known: {', '.join(REMAT_POLICIES)}")
    return value


def block_class(cls: Type[nn.Module], remat: str, scanned: bool) -> Type[nn.Module]:
    """`cls`, or `cls` rematerialised by the named policy (`train`, argument 3, static)."""
    if remat_name(remat) == "none":
        return cls
    # Inside a scan the loop already keeps XLA from merging recomputation with the forward.
    return nn.remat(cls, policy=REMAT_POLICIES[remat], prevent_cse=not scanned,
                    static_argnums=(3,))


def drop_path_rates(rate: float, count: int) -> Sequence[float]:
    """The per-block drop-path rates of a network of `count` blocks, first to last: the
    original's `torch.linspace(0, rate, count)` values, float32 as torch computes them (a
    float32 step; the first half counted up from 0, the second half down from `rate`)."""
    if count == 1:
        return [0.0]
    end = float(np.float32(rate))
    step = float(np.float32(end / (count - 1)))
    return [float(np.float32(i * step if i < count // 2 else end - (count - 1 - i) * step))
            for i in range(count)]


def scan_blocks(block: nn.Module, x: jax.Array, rates: Sequence[float], train: bool
                ) -> jax.Array:
    """Runs `block` once per entry of `rates` with `nn.scan`, its variables stacked on axis 0.

    block: an unbound module (its name is the stacked subtree's name); x: the
    block input, any shape; rates: the drop-path rate of each block (all
    zero: no drop path and no 'drop_path' rng needed).
    """
    rate_array = jnp.asarray(rates, jnp.float32) if any(rates) else None

    def body(module, carry, rate):
        return module(carry, rate, train), None

    scanned = nn.scan(body, variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                      split_rngs={"params": True, "drop_path": True}, length=len(rates))
    x, _ = scanned(block, x, rate_array)
    return x
