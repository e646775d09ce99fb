"""Transparent huge pages for the host allocator of a tadax process.

XLA:CPU allocates one buffer per execution for all of a program's
temporaries (1.76 GB for a TAdaConvNeXtV2-T train step at batch 1, 16
frames) and hands it back when the execution ends; glibc maps such a buffer
fresh each time, and the kernel then faults it in 4 KiB at a time: 460k page
faults and ~1 s of system time per step on a 2-core machine (15% of the
step). Asking glibc to back its large mappings with transparent huge pages
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc >= 2.35, the kernel's THP
mode `madvise`) cuts that to ~2k faults. glibc reads the setting only when a
process starts, so an entry point (train.py, eval.py, `python -m
tadax.bench`) re-runs itself once with it, before importing anything heavy.

`TADAX_HUGE_PAGES=0` keeps the process as it is.
"""

import os
import sys
from typing import Mapping, Optional, Sequence

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "TADAX_HUGE_PAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> Optional[tuple]:
    """(major, minor) of the C library when it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return None
    if name != "glibc":
        return None
    return tuple(int(part) for part in version.split(".")[:2])


def thp_mode(mode_file: str = THP_MODE_FILE) -> Optional[str]:
    """The kernel's transparent huge page mode ('always', 'madvise', 'never'), None if unknown."""
    try:
        with open(mode_file) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def environment_with_huge_pages(environ: Mapping[str, str], glibc: Optional[tuple],
                                mode: Optional[str]) -> Optional[dict]:
    """The environment to re-run this process with, or None where nothing would change.

    None when: the user opted out (`TADAX_HUGE_PAGES=0`), `GLIBC_TUNABLES` already
    names the tunable (also after the re-run), the C library is not glibc >= 2.35,
    or the kernel's THP mode is not 'madvise' ('always' already gives large
    mappings huge pages; 'never' or unknown gives none).
    """
    if environ.get(OPT_OUT, "1") == "0":
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or glibc is None or glibc < (2, 35) or mode != "madvise":
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    return env


def reexec_with_huge_pages(argv: Optional[Sequence[str]] = None) -> None:
    """Replaces this process by the same command with huge pages for large host
    allocations (see the module docstring); returns only where nothing would change.

    argv: the command line to re-run, default the interpreter's own
    (`sys.orig_argv`: `python -m tadax.bench ...` stays a module run).
    """
    env = environment_with_huge_pages(os.environ, glibc_version(), thp_mode())
    if env is None:
        return
    args = list(argv if argv is not None else sys.orig_argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + args[1:], env)
