"""The main journey, end to end, as users run it: an image starting point -> `python -m
tadax.convert` -> `python train.py --config configs/<recipe>.py` (shrunk by overrides,
initialised from the converted directory, EMA on, drop path > 0, bfloat16) -> `eval.py`
-> `python -m tadax.convert export` -> the export loaded strictly by the same settings.

The starting points are made here in the publishers' own formats: a CLIP with OpenAI's
module and key names saved as a TorchScript archive (float16, with a text tower that
conversion leaves out), and a ConvNeXt saved as the official ImageNet checkpoints are
(`{'model': state_dict}` with its head). Before any update the video model must be the
image model applied to each of its token frames (the centre tap of the temporal patch
kernel picks frames 0, 2, 4, ...), pooled as the video model pools: that reference is
computed in torch from the same file. Bugs this catches: the patch/stem kernel spread
over every temporal tap instead of the centre one, a transposed or misnamed weight, a
zero-initialised branch that is not zero, the EMA formula swapped or fed the old
parameters, `eval.use_ema`/`eval.py --ema`/`features --ema` reading the raw weights, an
export that drops or renames a parameter.
"""

import copy
import json
import os
import sys
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import command_server
from conftest import REPO_ROOT
from test_run_directory import assert_quiet
from tadax import convert
from tadax.data import pipeline
from tadax.models import build_model
from tadax.train.checkpointing import load_weights
from tadax.train.run_config import read_run_config
from tadax.train.state import abstract_variables, select_pretrained
from tadax.weights import mapping

torch = pytest.importorskip("torch")
nn = torch.nn

STEPS = 4
EMA_DECAY = 0.9
# A recipe shrunk to seconds: a small synthetic set (64 + 16 videos) at 32 pixels and 8
# frames, 4 steps of 8 clips with a checkpoint after each (the EMA is checked against every
# step's weights).
VAL_VIDEOS = 16
SHRINK = [
    "--config.data.synthetic.num_train=64", f"--config.data.synthetic.num_val={VAL_VIDEOS}",
    "--config.model.num_classes=8", "--config.model.num_frames=8", "--config.model.image_size=32",
    "--config.model.dtype=bfloat16", "--config.model.drop_path_rate=0.2",
    "--config.data.dataset=synthetic", "--config.data.num_classes=8", "--config.data.num_frames=8",
    "--config.data.train_crop_size=32", "--config.data.test_scale=32",
    "--config.data.test_crop_size=32", "--config.data.num_clips=2", "--config.data.num_crops=1",
    "--config.train.global_batch_size=8", "--config.train.steps_per_epoch=2",
    "--config.train.epochs=2", f"--config.train.ema_decay={EMA_DECAY}",
    "--config.train.log_every_steps=1", "--config.eval.use_ema=True", "--config.eval.batch_size=8",
    "--config.optimizer.warmup_epochs=0.5", "--config.optimizer.base_lr=0.01",
    "--config.checkpoint.every_steps=1", "--config.checkpoint.keep=10",
]


def _command(*args, timeout=600):
    """`python ARGS`: must succeed and print only its own lines (no TensorFlow C++ log
    lines, warnings or tracebacks: the recipes' RandAugment once added an E-line). Run
    through tests/command_server.py; what each entry point prints while it imports is
    checked in fresh interpreters by test_readme.py's `absl_flags`."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = command_server.run([sys.executable, *args], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert_quiet(run.stdout + run.stderr)
    return run.stdout


def _randomise(module: "nn.Module", seed: int) -> None:
    """Every parameter random at a scale that keeps activations O(1), LayerNorm scales
    around 1 (no parameter at a value that hides a wrong mapping: zeros, ones)."""
    gen = torch.Generator().manual_seed(seed)
    noise = lambda p: torch.randn(p.shape, generator=gen)
    with torch.no_grad():
        norms = [m for m in module.modules() if isinstance(m, (nn.LayerNorm, LayerNorm2d))]
        for m in norms:
            m.weight.copy_(1.0 + 0.1 * noise(m.weight))
            m.bias.copy_(0.1 * noise(m.bias))
        in_norms = {id(p) for m in norms for p in m.parameters()}
        for p in module.parameters():
            if id(p) not in in_norms:
                p.copy_(0.1 * noise(p) if p.ndim <= 1 else noise(p) * p[0].numel() ** -0.5)


# --- OpenAI CLIP, its module and key names (visual tower + a token text tower) -------------

class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)),
                                              ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x):                                   # (L, N, W)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads)
                                         for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, resolution, patch, width, layers, heads, output_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((resolution // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def class_token(self, x):
        """(N, 3, H, W) images -> (N, W) class tokens after the last block (before ln_post)."""
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding).permute(1, 0, 2)
        return self.transformer(x)[0]

    def forward(self, x):
        return self.ln_post(self.class_token(x)) @ self.proj


class CLIP(nn.Module):
    def __init__(self, width, layers, heads, patch, resolution, embed=32):
        super().__init__()
        self.visual = VisionTransformer(resolution, patch, width, layers, heads, embed)
        self.transformer = Transformer(embed, 1, 2)
        self.token_embedding = nn.Embedding(50, embed)
        self.positional_embedding = nn.Parameter(torch.zeros(8, embed))
        self.ln_final = nn.LayerNorm(embed)
        self.text_projection = nn.Parameter(torch.zeros(embed, embed))
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    def forward(self, image):
        return self.visual(image)


# --- ConvNeXt, the official ImageNet checkpoints' module and key names ---------------------

class LayerNorm2d(nn.Module):
    """The official ConvNeXt's channels-first LayerNorm (its `LayerNorm`, data_format
    'channels_first'): over C of (N, C, H, W)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(dim)), nn.Parameter(
            torch.zeros(dim)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps)) \
            + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim, act):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), act, nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, depths, dims, act):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0]))]
            + [nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2))
               for i in range(len(dims) - 1)])
        self.stages = nn.ModuleList([nn.Sequential(*[ConvNeXtBlock(d, act) for _ in range(n)])
                                     for n, d in zip(depths, dims)])
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], 1000)

    def pooled_map(self, x):
        """(N, 3, H, W) -> (N, C) the last stage's output averaged over H, W (before norm)."""
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return x.mean((2, 3))


# --- the journey -----------------------------------------------------------------------------

def _token_frames(video):
    """(B, T, H, W, 3) clip -> (B * T/2, 3, H, W) torch images of frames 0, 2, 4, ...: what
    the centre tap of a 3-frame kernel at temporal stride 2 (padding 1) looks at."""
    frames = np.asarray(video)[:, ::2]
    return torch.from_numpy(frames.reshape(-1, *frames.shape[2:]).transpose(0, 3, 1, 2).copy())


def _float32(model_cfg):
    cfg = model_cfg.copy_and_resolve_references()
    cfg.unlock()
    cfg.update(dtype="float32", drop_path_rate=0.0)
    return cfg


def _converted_logits(converted, video):
    """Eval-mode logits of the converted directory's model (float32) on `video`, and its
    variables."""
    variables, model_cfg = load_weights(str(converted))
    model = build_model(_float32(model_cfg))
    return np.asarray(jax.jit(model.apply)(variables, video)), variables


def _run_starts_from(run, converted, video, logits):
    """The run's own model (its config.json, in float32) with the weights `init.checkpoint`
    selects from the converted directory gives `logits`; returns those weights (the state
    before any update) and the run's config."""
    config = read_run_config(str(run))
    assert config.init.checkpoint == str(converted)
    model_cfg = _float32(config.model)
    model = build_model(model_cfg)
    loaded, _ = load_weights(str(converted))
    initial = select_pretrained(loaded, abstract_variables(model, model_cfg), config.init.fresh)
    np.testing.assert_allclose(jax.jit(model.apply)(initial, video), logits, atol=1e-6, rtol=0)
    return initial, config


def _assert_ema_of_every_step(run, initial):
    """The EMA after STEPS steps is `e_k = d e_(k-1) + (1 - d) w_k` from e_0 = the initial
    weights over the weights w_k saved after every step (params and BatchNorm statistics)."""
    ema = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), initial)
    for step in range(1, STEPS + 1):
        weights, _ = load_weights(str(run / "checkpoints" / str(step)))
        ema = jax.tree_util.tree_map(lambda e, w: EMA_DECAY * e + (1 - EMA_DECAY) * w, ema,
                                     weights)
    saved, _ = load_weights(str(run / "checkpoints" / str(STEPS)), use_ema=True)
    assert sorted(saved) == sorted(ema)
    flat_want, flat_got = mapping.flatten(ema), mapping.flatten(saved)
    assert flat_want.keys() == flat_got.keys()
    for path, want in flat_want.items():
        err = np.abs(flat_got[path] - want).max()
        assert err <= 1e-5 * np.abs(want).max() + 1e-8, (path, err)
    last, _ = load_weights(str(run / "checkpoints" / str(STEPS)))
    moved = max(np.abs(flat_got[p] - v).max() for p, v in mapping.flatten(last).items())
    assert moved > 1e-4      # the EMA is not the last weights: the check above means something


def _eval_report_uses(run, tmp_path, name, use_ema, config):
    """`eval.py --checkpoint RUN [--ema] --single_view`: its scores of the val videos are
    the bfloat16 model's on those clips with the EMA (or raw) weights."""
    out = tmp_path / name
    _command("eval.py", f"--checkpoint={run}", "--single_view", f"--output={out}",
             *(["--ema"] if use_ema else []))
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    model = build_model(config.model)
    variables, _ = load_weights(str(run), use_ema=use_ema)
    batches = pipeline.build_eval_iterator(config.data, split=config.eval.val_split,
                                           global_batch_size=8, multi_view=False)
    for batch in batches:
        probs = np.asarray(jax.nn.softmax(jax.jit(model.apply)(variables, batch["video"])))
        for p, vid in zip(probs, batch["video_id"]):
            row = rows[int(vid)]
            assert row["video_id"] == vid
            np.testing.assert_allclose(p[row["top5"]], row["top5_scores"], atol=1e-5)
    return json.loads((out / "metrics.json").read_text()), rows


def _exported_loads_strictly(run, tmp_path, config):
    """`convert export --ema` writes the original's state dict; mapped back strictly (every
    key used, none missing) into a model of the run's settings it gives the EMA weights."""
    out = tmp_path / "exported.pyth"
    assert convert.main(["export", "--input", str(run), "--output", str(out), "--ema"]) == 0
    state = {k: v.numpy() for k, v in torch.load(out, weights_only=True)["model_state"].items()}
    variables = convert.convert_zoo(state, config.model, str(out))
    want, _ = load_weights(str(run), use_ema=True)
    flat, flat_want = mapping.flatten(variables), mapping.flatten(want)
    assert flat.keys() == flat_want.keys()
    for path, value in flat_want.items():
        np.testing.assert_array_equal(flat[path], value, err_msg=str(path))


def test_clip_to_tadaformer_journey(tmp_path):
    width, depth, heads, patch, size = 64, 2, 2, 16, 32
    clip = CLIP(width, depth, heads, patch, size)
    _randomise(clip, seed=0)
    clip = clip.half().float()                 # the weights a float16 file holds, exactly
    scripted = torch.jit.trace(copy.deepcopy(clip), torch.zeros(1, 3, size, size))
    source = tmp_path / "ViT-tiny.pt"
    torch.jit.save(scripted.half(), str(source))

    converted = tmp_path / "clip_tiny"
    assert convert.main(["clip", "--input", str(source), "--output", str(converted),
                         "--arch", "tadaformer_b16", "--num-classes", "8",
                         "--set", f"width={width}", "--set", f"depth={depth}",
                         "--set", f"num_heads={heads}", "--set", f"image_size={size}",
                         "--set", "rf_head_dim=16", "--set", "num_frames=8"]) == 0
    # Before any update: CLIP on frames 0, 2, 4, 6, class tokens averaged, ln_post, head.
    video = jax.random.normal(jax.random.PRNGKey(0), (2, 8, size, size, 3))
    got, variables = _converted_logits(converted, video)
    with torch.no_grad():
        tokens = clip.visual.class_token(_token_frames(video)).reshape(2, 4, width).mean(1)
        features = clip.visual.ln_post(tokens).numpy()
    head = variables["params"]["head"]["out"]
    want = features @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    run = tmp_path / "run"
    _command("train.py", "--config=configs/tadaformer_b16.py", f"--workdir={run}",
             f"--config.init.checkpoint={converted}", f"--config.model.width={width}",
             f"--config.model.depth={depth}", f"--config.model.num_heads={heads}",
             "--config.model.rf_head_dim=16", *SHRINK)
    initial, config = _run_starts_from(run, converted, video, got)
    _assert_ema_of_every_step(run, initial)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last_val = [r["val/top1"] for r in history if "val/top1" in r][-1]
    ema_metrics, ema_rows = _eval_report_uses(run, tmp_path, "eval_ema", True, config)
    assert ema_metrics["top1"] == pytest.approx(last_val)      # eval.use_ema in training
    _, raw_rows = _eval_report_uses(run, tmp_path, "eval_raw", False, config)
    assert [r["top5_scores"] for r in ema_rows] != [r["top5_scores"] for r in raw_rows]

    feats = tmp_path / "features"
    _command("-m", "tadax.features", f"--checkpoint={run}", "--ema", "--single_view",
             "--split=val", f"--output={feats}")
    shard = np.load(next(feats.glob("features-*.npz")))
    ema_vars, _ = load_weights(str(run), use_ema=True)
    ema_model = build_model(config.model)
    batch = next(pipeline.build_eval_iterator(config.data, split="val", global_batch_size=8,
                                              multi_view=False))
    pooled = np.asarray(jax.jit(lambda v, x: ema_model.apply(v, x, method="features"))(
        ema_vars, batch["video"]))
    np.testing.assert_allclose(shard["features"][:8], pooled, atol=1e-5, rtol=0)
    assert shard["features"].shape[0] == VAL_VIDEOS

    _exported_loads_strictly(run, tmp_path, config)


def test_convnext_to_tadaconvnextv2_journey(tmp_path):
    depths, dims, size = (1, 1, 2, 1), (16, 32, 64, 128), 32
    # The video blocks use QuickGELU where ConvNeXt uses GELU; the reference uses the
    # video model's activation so that both compute the same function.
    image_model = ConvNeXt(depths, dims, act=nn.GELU())
    _randomise(image_model, seed=1)
    source = tmp_path / "convnext_tiny_1k_224.pth"
    torch.save({"model": image_model.state_dict()}, source)
    reference = ConvNeXt(depths, dims, act=QuickGELU())
    reference.load_state_dict(image_model.state_dict())

    converted = tmp_path / "convnext_tiny"
    assert convert.main(["convnext", "--input", str(source), "--output", str(converted),
                         "--arch", "tadaconvnextv2_tiny", "--num-classes", "8",
                         "--set", f"depths={depths}", "--set", f"dims={dims}",
                         "--set", "rf_head_dim=8", "--set", f"image_size={size}",
                         "--set", "num_frames=8"]) == 0
    # Before any update: ConvNeXt on frames 0, 2, 4, 6, maps averaged over frames and
    # space, the final LayerNorm, the head.
    video = jax.random.normal(jax.random.PRNGKey(0), (2, 8, size, size, 3))
    got, variables = _converted_logits(converted, video)
    with torch.no_grad():
        maps = reference.pooled_map(_token_frames(video)).reshape(2, 4, dims[-1]).mean(1)
        features = reference.norm(maps).numpy()
    head = variables["params"]["head"]["out"]
    want = features @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    run = tmp_path / "run"
    _command("train.py", "--config=configs/tadaconvnextv2_tiny.py", f"--workdir={run}",
             f"--config.init.checkpoint={converted}",
             f"--config.model.depths={depths}".replace(" ", ""),
             f"--config.model.dims={dims}".replace(" ", ""), "--config.model.rf_head_dim=8",
             *SHRINK)
    initial, config = _run_starts_from(run, converted, video, got)
    _assert_ema_of_every_step(run, initial)
    _eval_report_uses(run, tmp_path, "eval_ema", True, config)
    _exported_loads_strictly(run, tmp_path, config)
