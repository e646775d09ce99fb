"""What a run directory survives, end to end with the real commands in separate processes:
a second writer, a damaged checkpoint, a changed config, a full disk, Ctrl-C, a damaged
config.json. Each test starts from a copy of one tiny finished run (6 steps,
checkpoints 4 and 6), shared by every test and every xdist worker, so that no test
trains more than a few steps. docs/run_directory.md lists the faults and the test of each.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from filelock import FileLock

from conftest import REPO_ROOT
from test_train import STEPS, run_train

# Lines that must never reach a user on a normal run or an error path: tracebacks, asyncio's
# complaints at shutdown, absl-formatted warnings and errors (Orbax's), Python warnings.
NOISE = re.compile(r"Traceback|Event loop is closed|^[WE]\d{4} |WARNING|Warning:", re.M)
# What TensorFlow's C++ logging prints while it loads, before any tadax code runs (it
# ignores TF_CPP_MIN_LOG_LEVEL): not ours to silence, left out of the check.
TF_LOAD_LINES = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is "
                           r"called are written to STDERR|I0000 .*)\n", re.M)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, worker_id):
    """A finished tiny run (`test_train.TINY`: 6 steps), trained once per test session: the
    xdist workers share it through the session's common temporary folder."""
    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent
    run = root / "run_directory_tests_trained_run"
    with FileLock(str(run) + ".lock"):
        if not (run / "final_metrics.json").is_file():
            shutil.rmtree(run, ignore_errors=True)
            code, out = run_train(run)
            assert code == 0, out
    return run


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A private copy of the trained run."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def checkpoint_steps(run):
    return sorted(int(d.name) for d in (run / "checkpoints").iterdir() if d.name.isdigit())


def tree(folder):
    """{relative path: bytes} of every file under `folder`: what a refused command must not
    change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def assert_quiet(out):
    match = NOISE.search(TF_LOAD_LINES.sub("", out))
    assert match is None, f"noise {match.group(0)!r} in:\n{out}"


def assert_one_line_error(code, out, *parts):
    """Exit code 1, the last line `error: ...` containing `parts`, and no noise at all."""
    assert code == 1, out
    assert_quiet(out)
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: "), out
    for part in parts:
        assert part in last, (part, last)
    return last


def test_resume_and_eval_load_checkpoints_without_warnings(run_copy, tmp_path):
    """Resuming a run and evaluating it print no warnings. Bug watched: the state's metadata
    read through a `Checkpointer` (which looks for `_CHECKPOINT_METADATA` inside the item and
    warns "Metadata file does not exist" on every load)."""
    code, out = run_train(run_copy, "--config.train.epochs=3")
    assert code == 0, out
    assert f"resuming at step {STEPS}" in out
    assert_quiet(out)
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "eval.py"), f"--checkpoint={run_copy}", "--single_view",
         f"--output={tmp_path / 'eval'}"], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert_quiet(out.stdout + out.stderr)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_videos"] == 256
