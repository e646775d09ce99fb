"""The host CPU a benchmark ran on, in one line for its header.

XLA:CPU's matmul kernels pick their code at run time by the vector instructions
the CPU has, so the same command gives different tadax / original ratios on VMs
sold under one name (an "AMD EPYC" of one generation or another, with AVX-512 or
without it): the header says which kind each run had.
"""

import os
import platform
from typing import Mapping, Sequence

CPUINFO = "/proc/cpuinfo"
# Widest first: the first of these flags the CPU has names its vector width.
VECTOR_ISAS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"),
               ("asimd", "NEON"))
# Matrix / low-precision extensions worth knowing for a bf16 run.
EXTRAS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni")


def parse_cpuinfo(text: str) -> Mapping[str, object]:
    """The first processor's model and flag set of a /proc/cpuinfo text:
    {'model': str, 'flags': frozenset}. x86 names them 'model name' / 'flags', with
    the 'cpu family' and 'model' numbers appended (a VM's masked name such as "AMD
    EPYC" covers several generations); Arm has 'Features' (and often no model name)."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "cpu family", "model", "flags", "Features"):
            fields.setdefault(key, value.strip())
    model = fields.get("model name", "")
    if model and "cpu family" in fields and "model" in fields:
        model += f" (family {fields['cpu family']}, model {fields['model']})"
    flags = fields.get("flags", fields.get("Features", ""))
    return {"model": model, "flags": frozenset(flags.split())}


def describe(model: str, flags: Sequence[str], cores: int) -> str:
    """'host CPU: MODEL, N cores for this process; vector ISA: WIDEST (+ extras)'."""
    widest = next((name for flag, name in VECTOR_ISAS if flag in flags), "unknown")
    extras = [flag for flag in EXTRAS if flag in flags]
    return (f"host CPU: {model or 'unknown model'}, {cores} core(s) for this process; "
            f"vector ISA: {widest}" + (f" ({', '.join(extras)})" if extras else ""))


def host_cpu_line() -> str:
    """`describe` for this machine: /proc/cpuinfo where there is one (Linux), else the
    platform's processor name with the ISA unknown."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            info = parse_cpuinfo(f.read())
    except OSError:
        info = {"model": platform.processor(), "flags": frozenset()}
    return describe(info["model"], info["flags"], cores)
