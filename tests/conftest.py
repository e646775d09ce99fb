"""Shared test helpers: where the reference fixtures live; no skipping in CI.

Without the shared fixtures or a test dependency (torch, transformers,
scikit-video) the tests that need them skip, naming what is missing, so the
suite runs on a laptop. Under `CI=true` every skip is a failure instead, so
a CI run cannot pass by skipping.
"""

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import filelock
import pytest

from tadax import startup

REPO_ROOT = Path(__file__).resolve().parent.parent


def _share_compilation_cache() -> Path | None:
    """Points JAX's persistent compilation cache at one fresh folder for this test run.

    The first process to load this file (pytest itself, or xdist's controller) makes the
    folder and exports it; the xdist workers and every train.py / eval.py subprocess inherit
    the environment, so the many runs of the same tiny model load its compiled steps instead
    of compiling them again. A size limit turns on JAX's file lock, so two processes never
    read a half-written entry. Returns the folder when this process made it (and removes it
    at the end), else None.
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return None
    folder = Path(tempfile.mkdtemp(prefix="tadax-test-jax-cache-"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
    return folder


_COMPILATION_CACHE = _share_compilation_cache()

# Tests compile hundreds of small programs and run each a few times, so compiling is most
# of the suite's CPU time. Two XLA:CPU settings make it cheaper: level 0 skips LLVM's
# optimisation of the generated code (~35-50% faster compiles), and the older elemental
# emitters generate a fused kernel faster than the MLIR fusion emitters (another ~40% in
# the parity and precision tests). Only code generation changes, not XLA's graph passes or
# buffers; results agree to float rounding (the parity tests hold at their tolerances
# either way). Subprocesses inherit them, except the background commands, which run as a
# user runs them.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if not any(flag.split("=")[0] in os.environ.get("XLA_FLAGS", "")
           for flag in FAST_COMPILE.split()):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess that needs `devices` host devices (keeps the flags above)."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


def _shared_runs_folder() -> tuple:
    """(folder, made here?): one folder per test run for runs that tests of every process
    share (`background_run`), made by the first process and inherited like the cache."""
    if "TADAX_TEST_SHARED_RUNS" in os.environ:
        return Path(os.environ["TADAX_TEST_SHARED_RUNS"]), False
    folder = Path(tempfile.mkdtemp(prefix="tadax-test-runs-"))
    os.environ["TADAX_TEST_SHARED_RUNS"] = str(folder)
    return folder, True


SHARED_RUNS, _MADE_SHARED_RUNS = _shared_runs_folder()

# The environment as this file leaves it, before any test module (and jax) is imported.
SESSION_ENVIRONMENT = dict(os.environ)

# TensorFlow as the commands import it (without Keras 3, which it would otherwise load for
# the first test module that imports it: ~1.2 CPU-s in every test process).
startup.import_tensorflow_quietly()

# Commands that tests share, run once per test session in the background from the moment a
# collected test asks for them (`background_run(name)`), each in its own folder as cwd:
# "quickstart" is the README's first command, `python train.py`, exactly as a user types it
# (its run directory: workdirs/quickstart under that folder).
BACKGROUND_COMMANDS = {"quickstart": [sys.executable, str(REPO_ROOT / "train.py")]}


def _start_background(name: str) -> None:
    """Starts command `name` once across the session's processes (file lock); its output
    goes to `output.txt` and its exit code to `exit_code` in its folder."""
    folder = SHARED_RUNS / name
    with filelock.FileLock(f"{folder}.lock"):
        if folder.exists():
            return
        folder.mkdir()
        command = " ".join(f"'{part}'" for part in BACKGROUND_COMMANDS[name])
        env = dict(SESSION_ENVIRONMENT, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=os.environ["XLA_FLAGS"].replace(FAST_COMPILE, "").strip())
        proc = subprocess.Popen(["bash", "-c", f"{command} > output.txt 2>&1; echo $? > code.tmp; "
                                 "mv code.tmp exit_code"], cwd=folder, start_new_session=True,
                                env=env)
        (folder / "pid").write_text(str(proc.pid))


def background_run(name: str, timeout: float = 900.0) -> Path:
    """The folder of shared command `name` once it has finished (starting it if needed);
    fails with its output's tail if it failed. Tests must not change what is in it."""
    _start_background(name)
    folder = SHARED_RUNS / name
    deadline = time.time() + timeout
    while not (folder / "exit_code").exists():
        if time.time() > deadline:
            pytest.fail(f"{name} did not finish within {timeout:.0f} s")
        time.sleep(1.0)
    code = int((folder / "exit_code").read_text())
    if code != 0:
        pytest.fail(f"{name} exited with {code}:\n{(folder / 'output.txt').read_text()[-3000:]}")
    return folder


def shared_run(name: str, build) -> Path:
    """Folder `name` of the session's shared runs, made once per test session whichever
    process asks first (`build(folder)` under a file lock; a failed build is retried by the
    next caller). Tests must not change what is in it: copy it to change it."""
    folder = SHARED_RUNS / name
    with filelock.FileLock(f"{folder}.lock"):
        if not (folder.parent / f"{name}.done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            (folder.parent / f"{name}.done").touch()
    return folder


def pytest_collection_modifyitems(config, items):
    """Starts the shared background commands that the collected tests use, early, so they
    run while other tests do."""
    wanted = set()
    for item in items:
        for marker in item.iter_markers("background"):
            wanted.update(marker.args)
    for name in sorted(wanted):
        _start_background(name)


def pytest_collection_finish(session):
    """Moves everything imported so far (TensorFlow, torch, jax: millions of objects that
    live as long as the process) out of the garbage collector's view, so that its full
    collections during the tests and pytest's at the end scan only what the tests made."""
    gc.freeze()


def pytest_configure(config):
    config.addinivalue_line("markers", "background(name, ...): the test uses the shared "
                                       "background command NAME (conftest.background_run)")


def pytest_unconfigure(config):
    if _COMPILATION_CACHE is not None:
        shutil.rmtree(_COMPILATION_CACHE, ignore_errors=True)
    if _MADE_SHARED_RUNS:
        for pid_file in SHARED_RUNS.glob("*/pid"):
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        shutil.rmtree(SHARED_RUNS, ignore_errors=True)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Every test starts, and leaves, with the session's environment as it was before any
    test module was imported: a command run in-process (prepare sets TF_CPP_MIN_LOG_LEVEL)
    or an import (jax sets TF_CPP_MIN_LOG_LEVEL=1 on import) must not change what the
    commands a test starts inherit; a user's shell has neither, and the tests that look for
    TensorFlow's INFO lines must see what a user sees."""
    _reset_environment()
    yield
    _reset_environment()


def _reset_environment() -> None:
    """os.environ back to SESSION_ENVIRONMENT (pytest's own PYTEST_CURRENT_TEST kept)."""
    for key in set(os.environ) - set(SESSION_ENVIRONMENT) - {"PYTEST_CURRENT_TEST"}:
        del os.environ[key]
    for key, value in SESSION_ENVIRONMENT.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def strict() -> bool:
    """True under CI (`CI=true`, as CI services set it): skips are failures."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _fail_skips(report) -> None:
    if strict() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which allows no skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skips(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skips(outcome.get_result())


# Needs a checkout of the original PyTorch project ($TADAX_ORIGINAL). CI has none and allows
# no skips, so there the file is not collected without one; the header says so.
ORIGINAL_TESTS = ["test_bench_original.py", "test_convert_report_original.py"]
collect_ignore = ORIGINAL_TESTS if strict() and not os.environ.get("TADAX_ORIGINAL") else []


def pytest_report_header(config):
    if collect_ignore:
        return [f"not collected (CI=true and no TADAX_ORIGINAL, a checkout of the original "
                f"TAdaConv): {', '.join('tests/' + t for t in ORIGINAL_TESTS)}"]
    return []


def fixtures_dir() -> Path:
    """`$TADAX_FIXTURES`, default `../shared/fixtures` beside the repository."""
    return Path(os.environ.get("TADAX_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


def shared_dir() -> Path:
    """The project's read-only shared material (`../shared`)."""
    return fixtures_dir().parent


def fixture_entries():
    """Entries of fixtures.json, or an empty list when the fixtures are absent."""
    index = fixtures_dir() / "fixtures.json"
    if not index.is_file():
        return []
    return json.loads(index.read_text())


def require(path: Path, what: str) -> Path:
    """Skips the calling test, naming the missing path, unless `path` exists."""
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set TADAX_FIXTURES to the shared fixtures)")
    return path
