"""Under CI=true the suite cannot pass by skipping: missing fixtures and missing test
dependencies fail; without CI they skip with a reason that names what is missing."""

import os
import sys

import command_server
from conftest import REPO_ROOT

# Tests that need the shared fixtures (parity, torch reader) or the manifests.
NEEDS_SHARED = ["tests/test_parity.py", "tests/test_manifests.py", "tests/test_torch_reader.py"]


def run_pytest(tmp_path, ci, *args, pythonpath=None):
    empty = tmp_path / "nothing" / "fixtures"
    empty.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TADAX_FIXTURES=str(empty), CI="true" if ci else "",
               JAX_PLATFORMS="cpu")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    out = command_server.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p",
                              "no:cacheprovider", *args], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout + out.stderr


def _torch_hidden(tmp_path):
    """A folder for PYTHONPATH whose `torch` is a stub that is not importable: a test
    dependency missing as it is on a machine without it."""
    stub = tmp_path / "stub" / "torch"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    return stub.parent


def test_missing_fixtures_and_dependencies_skip_with_a_reason_outside_ci(tmp_path):
    """No fixtures, no manifests, no torch (test_torch_reader's module-level importorskip):
    every test that needs one skips, naming what is missing, and the run passes."""
    code, out = run_pytest(tmp_path, False, *NEEDS_SHARED, pythonpath=_torch_hidden(tmp_path))
    assert code == 0, out
    assert "failed" not in out and "error" not in out.lower().split("short test summary")[-1]
    assert "no fixtures.json in" in out and "set TADAX_FIXTURES" in out
    assert "manifests not found" in out
    assert "could not import 'torch'" in out, out


def test_missing_fixtures_fail_under_ci(tmp_path):
    code, out = run_pytest(tmp_path, True, *NEEDS_SHARED)
    assert code == 1, out
    assert "skipped under CI=true" in out and "no fixtures.json in" in out
    assert " skipped" not in out.splitlines()[-1], out.splitlines()[-1]


def test_missing_test_dependency_fails_under_ci(tmp_path):
    """A module-level importorskip of an absent test dependency fails the collection under
    CI (outside CI it skips: the test above)."""
    code, out = run_pytest(tmp_path, True, "tests/test_torch_reader.py",
                           pythonpath=_torch_hidden(tmp_path))
    assert code != 0 and "skipped under CI=true" in out and "could not import 'torch'" in out, out


def test_original_comparison_is_left_out_not_skipped_under_ci(tmp_path, monkeypatch):
    """CI has no checkout of the original: under CI=true without TADAX_ORIGINAL the file is
    not collected (the header names it); outside CI it is collected (and then skips)."""
    monkeypatch.delenv("TADAX_ORIGINAL", raising=False)
    only = ["-v", "--collect-only", "tests", "--ignore-glob=tests/test_[!b]*.py",
            "--ignore=tests/test_bench.py"]
    code, out = run_pytest(tmp_path, True, *only)
    assert code == 5 and "not collected (CI=true and no TADAX_ORIGINAL" in out, out
    assert "tests/test_bench_original.py" in out and "Function" not in out, out
    code, out = run_pytest(tmp_path, False, *only)
    assert code == 0 and "not collected" not in out, out
    assert "test_tiny_original_agrees_and_is_timed_alternately" in out, out
