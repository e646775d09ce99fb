"""The TAdaConv op alone: each implementation on TAdaFormer-B/16's depthwise shape and a dense one."""

from typing import List, Sequence, Tuple

import jax

from tadax.bench.runs import time_runs, xla_flops
from tadax.bench.table import min_median
from tadax.models.tadaconv import TAdaConv2dV2

# (label, (B, T, H, W, C), groups): TAdaFormer-B/16's depthwise TAdaConv, and a dense one.
OP_SHAPES: Sequence[Tuple[str, Tuple[int, ...], int]] = (
    ("depthwise 3x3, (4, 8, 14, 14, 384)", (4, 8, 14, 14, 384), 384),
    ("dense 3x3, (4, 8, 28, 28, 64)", (4, 8, 28, 28, 64), 1),
)
OP_HEADERS = ("op", "impl", "depthwise conv", "min / median", "XLA GFLOP")


def op_rows(shape: Tuple[int, ...], groups: int, runs: int, kernel: int = 3
            ) -> List[Tuple[str, str, str, float]]:
    """(impl, depthwise conv, min / median, XLA GFLOP) of a 'cout'-calibrated TAdaConv C -> C
    on `shape` = (B, T, H, W, C), for every implementation that applies."""
    channels = shape[-1]
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    alpha = (jax.random.normal(jax.random.PRNGKey(1), shape[:2] + (channels,)),
             jax.random.normal(jax.random.PRNGKey(2), shape[:2] + (channels,)))
    rows = []
    for impl in ("fast", "vmap"):
        for dw in (("shifted", "lax") if groups == channels else ("lax",)):
            conv = TAdaConv2dV2(channels, (kernel, kernel), (kernel // 2, kernel // 2),
                                groups=groups, cal_dim="cout", impl=impl, depthwise_impl=dw)
            variables = conv.init(jax.random.PRNGKey(3), x, False, alpha=alpha)
            compiled = jax.jit(lambda v, x, a, c=conv: c.apply(v, x, False, alpha=a)).lower(
                variables, x, alpha).compile()
            jax.block_until_ready(compiled(variables, x, alpha))
            seconds = time_runs(lambda: jax.block_until_ready(compiled(variables, x, alpha)),
                                runs)
            rows.append((impl, dw, min_median(seconds), f"{xla_flops(compiled) / 1e9:.3g}"))
    return rows
