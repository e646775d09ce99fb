"""train.py end to end on a tiny model: 1 device vs 8 devices (FSDP) vs two processes,
kill-and-resume, NaN stop, and the quick-start command."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import command_server
from conftest import REPO_ROOT, shared_run, xla_flags
from eval_reports import assert_same_report
from tadax.prepare import synthetic
from tadax.train.checkpointing import load_weights


STEPS = 6
# A tiny quick-start: 6 steps of 8 clips, checkpoints every 2 steps, validation at 3 and 6.
TINY = [
    "--config.model.depth=1", "--config.model.width=64", "--config.model.num_heads=2",
    "--config.model.rf_head_dim=16", "--config.train.global_batch_size=8",
    "--config.train.steps_per_epoch=3", "--config.train.epochs=2",
    "--config.optimizer.warmup_epochs=0.5", "--config.eval.batch_size=8",
    "--config.checkpoint.every_steps=2", "--config.eval.final_multi_view=False",
    "--config.train.log_every_steps=1", "--config.sharding.fsdp_min_size=1",
    # Some parameters have gradients that are zero up to rounding (attention's key bias;
    # TAdaFormer's branch behind the zero-initialised `tada_proj`). With Adam's eps at
    # 1e-8, rounding noise alone moves them by up to lr; a larger eps makes runs that
    # only round differently (other device counts) comparable at float tolerance.
    "--config.optimizer.eps=1e-3",
]


def run_train(workdir, *extra, devices=1, env_extra=None, wait=True, fresh_interpreter=False):
    """`python train.py` on the tiny model: (exit code, output), or the process if not
    `wait`. Through the command server (tests/command_server.py) unless
    `fresh_interpreter` (what start-up does is under test)."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices),
               JAX_PLATFORMS="cpu", **(env_extra or {}))
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), f"--workdir={workdir}", *TINY, *extra]
    start = subprocess.Popen if fresh_interpreter else command_server.popen
    proc = start(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def final_params(workdir):
    variables, _ = load_weights(str(workdir))
    return variables


def assert_trees_close(a, b, rtol=1e-4, atol=1e-6):
    import jax
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return np.array([r["train/loss"] for r in rows if "train/loss" in r])


def _train_tiny(workdir):
    code, out = run_train(workdir)
    assert code == 0, out


@pytest.fixture(scope="session")
def reference():
    """An uninterrupted single-device tiny run (TINY: 6 steps), trained once per test
    session and shared by every process's tests (conftest.shared_run)."""
    return shared_run("tiny_reference", _train_tiny)


def test_quick_start_command_logs_checkpoints_and_plots(reference):
    """`python train.py` (the quick start) with a tiny model and 6 steps."""
    rows = losses(reference)
    assert len(rows) == STEPS and np.all(np.isfinite(rows))
    steps = sorted(int(d) for d in os.listdir(reference / "checkpoints") if d.isdigit())
    assert steps[-1] == STEPS
    assert (reference / "training_curves.png").stat().st_size > 10_000
    assert any(f.startswith("events") for f in os.listdir(reference / "tensorboard"))
    final = json.loads((reference / "final_metrics.json").read_text())
    assert "val/top1" in final


def test_eight_devices_fsdp_match_one_device(reference, tmp_path):
    code, out = run_train(tmp_path, "--config.mesh.fsdp=4", devices=8)
    assert code == 0, out
    assert "mesh {'data': 2, 'fsdp': 4}" in out
    np.testing.assert_allclose(losses(tmp_path), losses(reference), rtol=1e-4)
    assert_trees_close(final_params(tmp_path), final_params(reference))


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(reference, tmp_path):
    port = free_port()
    procs = [run_train(tmp_path, "--distributed", f"--coordinator_address=localhost:{port}",
                       "--num_processes=2", f"--process_id={i}", devices=2, wait=False)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    assert "4 devices on 2 hosts" in outs[0]
    np.testing.assert_allclose(losses(tmp_path), losses(reference), rtol=1e-4)
    assert_trees_close(final_params(tmp_path), final_params(reference))


def test_sigkill_and_resume_match_uninterrupted(reference, tmp_path):
    proc = run_train(tmp_path, wait=False)
    ckpt_dir = tmp_path / "checkpoints"
    deadline = time.time() + 240
    # Kill as soon as the first checkpoint is complete, while later steps run.
    while time.time() < deadline and proc.poll() is None:
        if ckpt_dir.is_dir() and any(d.isdigit() for d in os.listdir(ckpt_dir)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
    assert done and max(done) < STEPS, "the run was not killed mid-training"
    code, out = run_train(tmp_path)
    assert code == 0, out
    assert f"resuming at step {max(done)}" in out
    np.testing.assert_allclose(losses(tmp_path), losses(reference), rtol=1e-5)
    assert_trees_close(final_params(tmp_path), final_params(reference), rtol=1e-5, atol=1e-7)


def test_sigterm_saves_the_current_step_and_resumes_to_the_same_result(reference, tmp_path):
    """A preemption notice (SIGTERM) mid-run: the run saves the step it is at (periodic
    saves are off here: only the first step, validations at 3 and 6, and the last are
    scheduled), exits with 143; the rerun resumes from it and ends where an uninterrupted
    run ends."""
    no_periodic = "--config.checkpoint.every_steps=1000"
    proc = run_train(tmp_path, no_periodic, wait=False, env_extra={"PYTHONUNBUFFERED": "1"})
    out = []
    for line in proc.stdout:
        out.append(line)
        if f"step 1/{STEPS} " in line:
            proc.send_signal(signal.SIGTERM)
            break
    out.append(proc.communicate(timeout=300)[0])
    out = "".join(out)
    assert proc.returncode == 143, out
    match = re.search(r"preempted: checkpoint saved at step (\d+)", out)
    assert match, out
    step = int(match.group(1))
    assert 1 < step < STEPS, out
    assert (tmp_path / "checkpoints" / str(step) / "state").is_dir()
    code, out = run_train(tmp_path, no_periodic)
    assert code == 0, out
    assert f"resuming at step {step}" in out
    np.testing.assert_allclose(losses(tmp_path), losses(reference), rtol=1e-5)
    assert_trees_close(final_params(tmp_path), final_params(reference), rtol=1e-5, atol=1e-7)


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path):
    code, out = run_train(tmp_path, "--config.optimizer.base_lr=1e30",
                          "--config.optimizer.warmup_epochs=0", "--config.checkpoint.every_steps=1")
    assert code == 1 and "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert re.match(r"error: loss is (nan|-?inf) at step \d+", last) and \
        "last good checkpoint is step" in last, last
    saved = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
    assert saved and max(saved) < STEPS


def test_eval_cli_on_the_run_matches_its_validation(reference, tmp_path):
    """eval.py on a training run, without --config or overrides (it reads back the run's
    saved config: the tiny model and its data): multi-view writes the report, in one
    process or two. (Its single view giving the run's last validation accuracy:
    test_run_directory.py::test_longer_schedule_resumes_quietly_and_is_recorded.)"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    base = [sys.executable, str(REPO_ROOT / "eval.py"), f"--checkpoint={reference}"]
    out = command_server.run(base + [f"--output={tmp_path / 'multi'}"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "host 0/1 evaluates videos 0-255 from 4 shard files" in out.stdout
    multi = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert multi["views_per_video"] == [2, 2] and multi["num_videos"] == 256
    assert (tmp_path / "multi" / "confusion.png").exists()
    # Without --labels the names come from the dataset's classes.txt.
    row = json.loads((tmp_path / "multi" / "predictions.jsonl").read_text().splitlines()[0])
    assert row["label_name"] in synthetic.CLASSES and len(row["top5_names"]) == 5

    # Two processes: each reads the 2 shard files of its half of the 256 videos, and the
    # report they write is the one-process report.
    port = free_port()
    procs = [command_server.popen(
        base + [f"--output={tmp_path / 'two'}", "--distributed",
                f"--coordinator_address=localhost:{port}", "--num_processes=2",
                f"--process_id={i}"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, outs):
        assert p.returncode == 0, text
    assert "host 0/2 evaluates videos 0-127 from 2 shard files" in outs[0]
    assert "host 1/2 evaluates videos 128-255 from 2 shard files" in outs[1]
    assert_same_report(tmp_path / "two", tmp_path / "multi")
    assert (tmp_path / "two" / "confusion.png").exists()


def test_eval_cli_classifies_one_video_file(reference, tmp_path):
    names = ["appearing", "disappearing", "growing", "moving down", "moving left to right",
             "moving right to left", "moving up", "shrinking"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    subprocess.run([sys.executable, str(REPO_ROOT / "data" / "synthetic.py"), f"--out={tmp_path}",
                    "--train=0", "--val=1"], check=True, capture_output=True, cwd=REPO_ROOT)
    video = next((tmp_path / "videos" / "val").glob("*.mp4"))
    out = command_server.run(
        [sys.executable, str(REPO_ROOT / "eval.py"), f"--checkpoint={reference}",
         f"--video={video}", f"--labels={tmp_path / 'classes.txt'}"],
        cwd=REPO_ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
        text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-6].endswith(": 2 views")
    scores = [float(line.split()[0]) for line in lines[-5:]]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-5
    assert all(line.split(maxsplit=1)[1] in names for line in lines[-5:])
