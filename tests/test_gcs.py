"""gs:// end to end against a real GCS server (gcp-storage-emulator on loopback).

One run as a user on Google Cloud would do it, every path on gs://: prepare a tiny
dataset, train the quick-start model with its run directory on gs://, kill it after
its first checkpoint and resume, evaluate the run, classify a video, convert a zoo
checkpoint and export it back. TensorFlow's own GCS client (tf.io.gfile, TFRecord
reading and writing, TensorBoard events; also etils.epath's default backend) reaches
the emulator through tests/gcs_proxy.py, Orbax's array data (tensorstore) directly.
What the commands wrote is checked by reading the emulator over its plain HTTP API,
and nothing may land on local disk under a mangled 'gs:' name.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

import command_server
from conftest import REPO_ROOT, fixtures_dir, require
from test_train import TINY

BUCKET = "tadax-test"
STEPS = 6


def _require_test_packages():
    """The emulator and the CA's crypto library: a skip on a laptop, a failure under CI."""
    try:
        import cryptography  # noqa: F401
        import gcp_storage_emulator  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"test dependency missing under CI: {e}")
        pytest.skip(f"needs the test extras ({e})")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(client environment, emulator URL) of a running emulator with BUCKET."""
    _require_test_packages()
    from gcs_emulator import running_gcs
    folder = tmp_path_factory.mktemp("gcs")
    with running_gcs(folder, BUCKET) as env:
        yield env, env["STORAGE_EMULATOR_HOST"]


def _objects(url, prefix):
    """Names of the objects under `prefix`, read from the emulator's JSON API."""
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?{query}") as r:
        return sorted(item["name"] for item in json.load(r).get("items", []))


def _download(url, name) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(f"{url}/download/storage/v1/b/{BUCKET}/o/{quoted}?alt=media") as r:
        return r.read()


def _upload(url, name, data: bytes):
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    request = urllib.request.Request(f"{url}/upload/storage/v1/b/{BUCKET}/o?{query}", data=data,
                                     headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(request).read()


def _committed_steps(url):
    """Steps of the run's checkpoints that Orbax has committed."""
    return {int(m.group(1)) for n in _objects(url, "run/checkpoints/")
            if (m := re.fullmatch(r"run/checkpoints/(\d+)/commit_success\.txt", n))}


def _command(env, cwd, *args, wait=True):
    """Runs `python ARGS` from `cwd` (where a mangled 'gs:' folder would appear)."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    proc = command_server.popen([sys.executable, *args], cwd=cwd,
                                env=dict(os.environ, **env, JAX_PLATFORMS="cpu", PYTHONPATH=path),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def _train(env, cwd, wait=True):
    return _command(env, cwd, str(REPO_ROOT / "train.py"), f"--workdir=gs://{BUCKET}/run",
                    f"--config.data.data_dir=gs://{BUCKET}/data", *TINY, wait=wait)


def test_prepare_train_resume_evaluate_on_gcs(gcs, tmp_path):
    env, url = gcs
    raw = tmp_path / "raw"
    _command(env, tmp_path, str(REPO_ROOT / "data" / "synthetic.py"), f"--out={raw}",
             "--train=16", "--val=8")
    _command(env, tmp_path, str(REPO_ROOT / "data" / "prepare.py"), "kinetics",
             f"--root={raw / 'videos'}", f"--out=gs://{BUCKET}/data", "--shards=2",
             "--workers=1", "--quiet", f"--split=train={raw / 'train.csv'}",
             f"--split=val={raw / 'val.csv'}")
    data = _objects(url, "data/")
    for split in ("train", "val"):
        assert {f"data/{split}-0000{i}-of-00002" for i in range(2)} <= set(data), data
        assert f"data/_meta/{split}-00000-of-00002.json" in data
    assert "data/classes.txt" in data and "data/train-report.txt" in data

    # Train; SIGKILL once the first checkpoint is committed on GCS (Orbax's marker there:
    # checkpoints/STEP/commit_success.txt), then resume.
    proc = _train(env, tmp_path, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not _committed_steps(url):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    first_out = proc.communicate()[0]
    done = _committed_steps(url)
    assert done and max(done) < STEPS, f"not killed mid-training: {done}\n{first_out}"
    out = _train(env, tmp_path)
    assert f"resuming at step {max(done)}" in out, out
    run = _objects(url, "run/")
    assert f"run/checkpoints/{STEPS}/commit_success.txt" in run
    assert {"run/config.json", "run/final_metrics.json", "run/training_curves.png",
            "run/metrics.jsonl"} <= set(run)
    assert any(n.startswith("run/tensorboard/events.out.tfevents") for n in run)
    steps = [json.loads(line)["step"] for line in _download(url, "run/metrics.jsonl").splitlines()
             if "train/loss" in json.loads(line)]
    assert steps == list(range(1, STEPS + 1))
    final = json.loads(_download(url, "run/final_metrics.json"))

    # Evaluate the run from GCS into GCS: the single view is the run's last validation.
    _command(env, tmp_path, str(REPO_ROOT / "eval.py"), f"--checkpoint=gs://{BUCKET}/run",
             f"--config.data.data_dir=gs://{BUCKET}/data", *TINY, "--single_view",
             f"--output=gs://{BUCKET}/eval")
    metrics = json.loads(_download(url, "eval/metrics.json"))
    assert metrics["top1"] == pytest.approx(final["val/top1"])
    assert {"eval/predictions.jsonl", "eval/confusion.png"} <= set(_objects(url, "eval/"))

    # One video read from GCS.
    video = sorted((raw / "videos" / "val").glob("*.mp4"))[0]
    _upload(url, "videos/clip.mp4", video.read_bytes())
    out = _command(env, tmp_path, str(REPO_ROOT / "eval.py"), f"--checkpoint=gs://{BUCKET}/run",
                   *TINY, f"--video=gs://{BUCKET}/videos/clip.mp4")
    assert f"gs://{BUCKET}/videos/clip.mp4: 2 views" in out
    assert not (tmp_path / "gs:").exists() and not (REPO_ROOT / "gs:").exists()


def test_convert_and_export_on_gcs(gcs, tmp_path):
    env, url = gcs
    pyth = require(fixtures_dir() / "tadaformer_tiny_k400.pyth", "the reference fixtures")
    _upload(url, "zoo/tadaformer_tiny_k400.pyth", pyth.read_bytes())
    convert = ["-m", "tadax.convert"]
    _command(env, tmp_path, *convert, "zoo", f"--input=gs://{BUCKET}/zoo/tadaformer_tiny_k400.pyth",
             f"--output=gs://{BUCKET}/ckpt/tiny", f"--report=gs://{BUCKET}/ckpt/tiny.json")
    assert "ckpt/tiny/variables/_METADATA" in _objects(url, "ckpt/tiny/")
    report = json.loads(_download(url, "ckpt/tiny.json"))
    assert report["input"] == f"gs://{BUCKET}/zoo/tadaformer_tiny_k400.pyth"
    assert not _objects(url, "ckpt/tiny.tmp-write")
    _command(env, tmp_path, *convert, "export", f"--input=gs://{BUCKET}/ckpt/tiny",
             f"--output=gs://{BUCKET}/export/tiny.pyth")
    from tadax import torch_reader
    (tmp_path / "back.pyth").write_bytes(_download(url, "export/tiny.pyth"))
    exported = torch_reader.load_torch_file(tmp_path / "back.pyth")["model_state"]
    original = torch_reader.load_torch_file(pyth)["model_state"]
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        if not key.endswith("num_batches_tracked"):   # not a model variable; exported as 0
            np.testing.assert_array_equal(exported[key], value, err_msg=key)
    assert not (tmp_path / "gs:").exists() and not (REPO_ROOT / "gs:").exists()


def test_synthetic_cache_on_gcs(gcs, tmp_path):
    """`data.cache_dir=gs://...`: generated locally, uploaded with classes.txt last, and then
    found complete (a second call generates nothing)."""
    env, url = gcs
    script = (
        "from tadax.data import config, pipeline\n"
        "from tadax.prepare import synthetic\n"
        f"cfg = config.data_config(cache_dir='gs://{BUCKET}/cache')\n"
        "cfg.synthetic.update(num_train=8, num_val=8, num_shards=2)\n"
        "folder = synthetic.ensure_synthetic(cfg)\n"
        "print(folder, pipeline.num_examples(cfg, 'train'), pipeline.num_examples(cfg, 'val'))\n"
        "synthetic.write_dataset = None   # a second call must not generate\n"
        "assert synthetic.ensure_synthetic(cfg) == folder\n")
    out = _command(env, tmp_path, "-c", script)
    folder = out.strip().splitlines()[-1].split()
    assert folder[0].startswith(f"gs://{BUCKET}/cache/synthetic_8x16x32_")
    assert folder[1:] == ["8", "8"]
    name = folder[0][len(f"gs://{BUCKET}/"):]
    cached = set(_objects(url, name + "/"))
    assert {f"{name}/classes.txt", f"{name}/train-00001-of-00002",
            f"{name}/_meta/val-00000-of-00002.json"} <= cached
    assert not any("/videos/" in n for n in cached)
    assert not (tmp_path / "gs:").exists()


def test_linear_probe_of_videos_on_gcs(gcs, tmp_path):
    """`python -m tadax.finetune --linear-probe` with the videos and the work directory on
    gs:// (split, prepared shards, features, classifier, evaluation, report all written
    there). The local copy the decoder reads holds an older version of one video. Bugs
    watched: a user path read with os.path / open() (nothing found on gs://, or a local
    'gs:' folder); np.savez into a gs:// file (zip writing seeks); a stale cached copy that
    stops the command (a rename onto an existing file) or is used."""
    import hashlib
    from test_finetune import CLASSES, PER_CLASS, _checkpoint, _videos
    env, url = gcs
    videos, checkpoint = _videos(), _checkpoint()
    for path in sorted(videos.rglob("*.mp4")):
        _upload(url, f"mine/{path.relative_to(videos)}", path.read_bytes())
    digest = hashlib.sha1(f"gs://{BUCKET}/mine".encode()).hexdigest()[:12]
    stale = tmp_path / "cache" / f"videos_{digest}" / CLASSES[0] / "00.mp4"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an older version")
    _command(env, tmp_path, "-m", "tadax.finetune", f"--videos=gs://{BUCKET}/mine",
             f"--checkpoint={checkpoint}", f"--workdir=gs://{BUCKET}/probe", "--linear-probe",
             f"--config.finetune.cache_dir={tmp_path / 'cache'}")
    metrics = json.loads(_download(url, "probe/linear_probe/eval/metrics.json"))
    assert metrics["top1"] >= 75.0, metrics
    report = _download(url, "probe/linear_probe/report.md").decode()
    for name in CLASSES:
        assert f"| {name} | {PER_CLASS - 2} | 2 |" in report, report
    assert "probe/split/train.csv" in _objects(url, "probe/split/")
    assert stale.read_bytes() == (videos / CLASSES[0] / "00.mp4").read_bytes()
    assert not (tmp_path / "gs:").exists() and not (REPO_ROOT / "gs:").exists()
