"""Forward-pass benchmark: named models at their zoo input size, and the TAdaConv op alone.

  python -m tadax.bench                      # everything, batch 1
  python -m tadax.bench --models tadaformer_b16 --batch 4 --iters 5
  python -m tadax.bench --op-only

Prints clips/s, the FLOP count XLA reports for the compiled computation
(`compiled.cost_analysis()`), and the achieved FLOP/s, on whatever backend
JAX runs (CPU, GPU, TPU), and which depthwise-conv implementation was used.
"""

import argparse
import time
from typing import Callable, Dict, List, Optional

import jax
import jax.numpy as jnp

from tadax.models import ARCHITECTURES, build_model, default_model_config
from tadax.models.layers import resolve_depthwise_impl
from tadax.models.tadaconv import TAdaConv2dV2

ZOO_MODELS = ["tadaformer_b16", "tadaformer_l14", "tadaconvnextv2_tiny", "tadaconvnextv2_small",
              "tadaconvnextv2_base"]


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0)) if analysis else 0.0


def time_compiled(fn: Callable, *args, iters: int) -> Dict[str, float]:
    """Compiles `fn(*args)`, runs it once to warm up, then times `iters` runs.

    Returns seconds per call (median), the XLA FLOP count and FLOP/s.
    """
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    flops = _flops(compiled)
    return {"seconds": seconds, "flops": flops, "flops_per_s": flops / seconds}


def bench_model(arch: str, batch: int, iters: int, depthwise_impl: str,
                tadaconv_impl: str) -> Dict[str, float]:
    """Eval-mode forward of a named model at its zoo input `(batch, 16, 224, 224, 3)`."""
    cfg = default_model_config(arch, depthwise_impl=depthwise_impl, tadaconv_impl=tadaconv_impl)
    model = build_model(cfg)
    video = jnp.zeros((batch, cfg.num_frames, cfg.image_size, cfg.image_size, 3), jnp.float32)
    variables = jax.jit(lambda k: model.init({"params": k}, video))(jax.random.PRNGKey(0))
    result = time_compiled(lambda v, x: model.apply(v, x), variables, video, iters=iters)
    result["clips_per_s"] = batch / result["seconds"]
    return result


def bench_tadaconv(impl: str, depthwise_impl: str, iters: int, shape, groups: int,
                   kernel: int = 3) -> Dict[str, float]:
    """A 'cout'-calibrated TAdaConv alone on `shape` = (B, T, H, W, C), C -> C channels."""
    channels = shape[-1]
    conv = TAdaConv2dV2(channels, (kernel, kernel), (kernel // 2, kernel // 2), groups=groups,
                        cal_dim="cout", impl=impl, depthwise_impl=depthwise_impl)
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    alpha = (jax.random.normal(jax.random.PRNGKey(1), shape[:2] + (channels,)),
             jax.random.normal(jax.random.PRNGKey(2), shape[:2] + (channels,)))
    variables = conv.init(jax.random.PRNGKey(3), x, False, alpha=alpha)
    return time_compiled(lambda v, x, a: conv.apply(v, x, False, alpha=a), variables, x, alpha,
                         iters=iters)


# (label, shape, groups): TAdaFormer-B/16's depthwise TAdaConv, and a dense one.
OPS = [("depthwise 3x3, (4, 8, 14, 14, 384)", (4, 8, 14, 14, 384), 384),
       ("dense 3x3, (4, 8, 28, 28, 64)", (4, 8, 28, 28, 64), 1)]


def _row(name: str, r: Dict[str, float], extra: str = "") -> str:
    return (f"{name:<44} {r['seconds'] * 1e3:>10.2f} ms {r['flops'] / 1e9:>10.2f} GFLOP "
            f"{r['flops_per_s'] / 1e9:>8.1f} GFLOP/s {extra}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tadax.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=ZOO_MODELS, choices=sorted(ARCHITECTURES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--depthwise-impl", default="auto", choices=["auto", "shifted", "lax"])
    parser.add_argument("--tadaconv-impl", default="fast", choices=["fast", "vmap"])
    parser.add_argument("--op-only", action="store_true", help="only the TAdaConv op")
    args = parser.parse_args(argv)

    chosen = resolve_depthwise_impl(args.depthwise_impl)
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{jax.device_count()} device(s); depthwise conv: {chosen} "
          f"(asked: {args.depthwise_impl})")
    for label, shape, groups in OPS:
        print(f"TAdaConv op alone, {label}:")
        for impl in ("fast", "vmap"):
            for dw in (("shifted", "lax") if groups == shape[-1] else ("lax",)):
                r = bench_tadaconv(impl, dw, args.iters, shape, groups)
                print(_row(f"  impl={impl} conv={dw}", r))
    if args.op_only:
        return
    print(f"Models, eval forward, batch {args.batch}, tadaconv_impl={args.tadaconv_impl}:")
    for arch in args.models:
        r = bench_model(arch, args.batch, args.iters, args.depthwise_impl, args.tadaconv_impl)
        print(_row(f"  {arch}", r, f"{r['clips_per_s']:.3f} clips/s"), flush=True)


if __name__ == "__main__":
    main()
