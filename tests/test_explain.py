"""`eval.py --video FILE --explain DIR` on the quick-start model (random weights): the
pictures exist and the plotted values are the ones the model computes."""

import json
import sys

import jax
import numpy as np
import pytest

import command_server
from conftest import REPO_ROOT
from test_features import random_variables
from tadax import explain
from tadax.models import build_model


def test_alphas_in_network_order():
    fake = {"backbone": {f"layers_{i}": {name: {"tadaconv": {"rf_func": {"alpha": (i * 10 + j,)}}}
                                         for j, name in enumerate(("tada2", "tada"))}
                         for i in (10, 2, 0)}}
    paths = [p for p, _ in explain.collect_alphas(fake)]
    assert paths == [f"backbone/layers_{i}/{n}/tadaconv/rf_func"
                     for i in (0, 2, 10) for n in ("tada", "tada2")]
    assert explain.block_label(paths[1]) == "layers_0/tada2"
    assert explain.block_label("backbone/stages_2_5/dwconv_rf") == "stages_2_5"
    # A scanned stack sows one alpha per routing function, stacked over its blocks.
    stacked = {"backbone": {"stages_1": {"dwconv_rf": {"alpha": (np.arange(3)[:, None],)}},
                            "stages_0": {"dwconv_rf": {"alpha": (np.arange(2)[:, None] + 5,)}}}}
    found = explain.collect_alphas(stacked)
    assert [p for p, _ in found] == [f"backbone/stages_{s}_{j}/dwconv_rf"
                                     for s, n in ((0, 2), (1, 3)) for j in range(n)]
    assert [float(a[0]) for _, a in found] == [5, 6, 0, 1, 2]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    from configs import quickstart
    from tadax.checkpoint_io import save_variables
    from tadax.prepare import synthetic

    root = tmp_path_factory.mktemp("explain")
    config = quickstart.get_config()
    model = build_model(config.model)
    variables = random_variables(model, config.model, seed=3)
    save_variables(str(root / "ckpt"), variables, config.model)
    video = root / "clip.mp4"
    synthetic.write_mp4(str(video), synthetic.class_clip(np.random.default_rng(0), "moving up",
                                                         16, 32), 8)
    (root / "classes.txt").write_text("\n".join(synthetic.CLASSES) + "\n")
    return dict(root=root, config=config, model=model, variables=variables, video=video)


def test_explain_from_the_command_line(quickstart):
    root, config, model = quickstart["root"], quickstart["config"], quickstart["model"]
    out = root / "out"
    cmd = [sys.executable, "eval.py", "--video", str(quickstart["video"]), "--checkpoint",
           str(root / "ckpt"), "--explain", str(out), "--labels", str(root / "classes.txt"),
           "--config", "configs/quickstart.py"]
    run = command_server.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("scores.png", "calibration.png"):
        assert (out / name).stat().st_size > 10_000, name
    saved = np.load(out / "explain.npz")

    # The same views through a direct model call that keeps the intermediates.
    from tadax.data.video import load_views

    data_cfg = config.data          # quick start: 2 clips x 1 crop, 8 frames, 32 px
    views = load_views(str(quickstart["video"]), data_cfg).astype(np.float32)
    logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(
        quickstart["variables"], views)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    np.testing.assert_allclose(saved["probs"], probs, atol=1e-6)
    np.testing.assert_allclose(saved["aggregate"], probs.mean(0), atol=1e-6)
    backbone = state["intermediates"]["backbone"]
    want = np.stack([np.asarray(backbone[f"layers_{i}"]["tada"]["tadaconv"]["rf_func"]["alpha"][0])
                     .mean(-1) for i in range(config.model.depth)], axis=1)
    assert saved["alpha_mean"].shape == (2, config.model.depth, config.model.num_frames // 2)
    np.testing.assert_allclose(saved["alpha_mean"], want, atol=1e-6)
    assert np.ptp(want) > 1e-3, "the calibration should vary over time and depth"

    summary = json.loads((out / "explain.json").read_text())
    top = np.argsort(-probs.mean(0))[:5]
    assert [e["class"] for e in summary["aggregate_top"]] == top.tolist()
    from tadax.prepare import synthetic
    assert summary["aggregate_top"][0]["name"] == synthetic.CLASSES[top[0]]
    assert summary["blocks"] == ["layers_0/tada", "layers_1/tada"]
    # eval.py's printed top-5 is the same ranking of the same scores.
    assert f"{probs.mean(0)[top[0]]:.4f}  {synthetic.CLASSES[top[0]]}" in run.stdout

