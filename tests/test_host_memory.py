"""Huge pages for the host allocator (tadax/host_memory.py): when the entry points re-run
themselves, with what environment, and that it removes XLA:CPU's per-execution page faults."""

import os
import subprocess
import sys
import textwrap

import pytest

from tadax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = host_memory.glibc_version()
MODE = host_memory.thp_mode()
APPLIES = GLIBC is not None and GLIBC >= (2, 35) and MODE == "madvise"
NOT_APPLICABLE = (f"huge pages are not asked for here (glibc {GLIBC}, THP mode {MODE}; "
                  "needs glibc >= 2.35 and THP 'madvise')")


def test_environment_adds_the_tunable_once():
    env = host_memory.environment_with_huge_pages({"PATH": "/bin"}, (2, 36), "madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    again = host_memory.environment_with_huge_pages(env, (2, 36), "madvise")
    assert again is None


def test_environment_keeps_the_users_tunables():
    env = host_memory.environment_with_huge_pages(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "madvise")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    # A user's own hugetlb choice (even 0) is theirs.
    assert host_memory.environment_with_huge_pages(
        {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), "madvise") is None


@pytest.mark.parametrize("environ,glibc,mode", [
    ({"TADAX_HUGE_PAGES": "0"}, (2, 36), "madvise"),   # opted out
    ({}, (2, 34), "madvise"),                         # glibc without the tunable
    ({}, None, "madvise"),                            # not glibc (musl, macOS)
    ({}, (2, 36), "always"),                          # large mappings get huge pages already
    ({}, (2, 36), "never"),
    ({}, (2, 36), None),                              # no THP (not Linux, no sysfs)
])
def test_environment_unchanged(environ, glibc, mode):
    assert host_memory.environment_with_huge_pages(environ, glibc, mode) is None


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert host_memory.thp_mode(str(mode_file)) == "madvise"
    mode_file.write_text("[always] madvise never\n")
    assert host_memory.thp_mode(str(mode_file)) == "always"
    assert host_memory.thp_mode(str(tmp_path / "missing")) is None


def _run(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", "TADAX_HUGE_PAGES")}
    environ.update(env, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


REEXEC = """
    import os, sys
    print("start", os.environ.get("GLIBC_TUNABLES"), flush=True)
    from tadax import host_memory
    host_memory.reexec_with_huge_pages()
    print("running", os.environ.get("GLIBC_TUNABLES"), sys.argv)
"""


@pytest.mark.skipif(not APPLIES, reason=NOT_APPLICABLE)
def test_reexec_runs_the_same_command_once_with_huge_pages():
    lines = _run(REEXEC).splitlines()
    assert lines == ["start None", "start glibc.malloc.hugetlb=1",
                     "running glibc.malloc.hugetlb=1 ['-c']"]


def test_reexec_opt_out_keeps_the_process():
    lines = _run(REEXEC, TADAX_HUGE_PAGES="0").splitlines()
    assert lines == ["start None", "running None ['-c']"]


FAULTS = """
    import resource, jax, jax.numpy as jnp
    from tadax import host_memory
    host_memory.reexec_with_huge_pages()
    # A program whose temporaries (~400 MB) live in XLA:CPU's per-execution buffer.
    f = jax.jit(lambda x: jnp.sum(jnp.sin(jnp.outer(x, x)) * jnp.cos(jnp.outer(x, x))))
    x = jnp.linspace(0.0, 1.0, 7000)
    f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        f(x).block_until_ready()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


@pytest.mark.skipif(not APPLIES, reason=NOT_APPLICABLE)
def test_huge_pages_remove_most_page_faults_of_an_execution():
    default = int(_run(FAULTS, TADAX_HUGE_PAGES="0").split()[-1])
    huge = int(_run(FAULTS).split()[-1])
    # ~400 MB of temporaries are ~100k 4 KiB faults per execution; huge pages, a few hundred.
    assert default > 20000, default
    assert huge * 10 < default, (huge, default)
