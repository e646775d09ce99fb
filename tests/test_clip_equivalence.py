"""A fresh TAdaFormer on imported CLIP weights computes CLIP's image tower, frame by frame.

The reference is a third-party implementation: `transformers`' CLIPVisionModel
with random weights, saved as safetensors (the Hugging Face layout), converted
by `python -m tadax.convert clip_hf`. With `tada_proj` zero-initialised the
TAdaFormer branches add nothing, and the centre-tap tubelet kernel with
temporal stride 2 makes token frame j see input frame 2j alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tadax import checkpoint_io, convert
from tadax.models import build_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WIDTH, LAYERS, HEADS, PATCH, IMAGE = 64, 2, 4, 8, 32


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, image_size=IMAGE, patch_size=PATCH, hidden_act="quick_gelu",
        layer_norm_eps=1e-5)
    model = transformers.CLIPVisionModel(config).eval()
    with torch.no_grad():  # random norms and biases too, so nothing is trivially zero or one
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    directory = tmp_path_factory.mktemp("hf_clip")
    model.save_pretrained(directory, safe_serialization=True)
    return model, directory / "model.safetensors"


def test_tadaformer_on_clip_weights_equals_clip_per_frame(hf_clip, tmp_path):
    model_hf, weights = hf_clip
    out = tmp_path / "converted"
    code = convert.main([
        "clip_hf", "--input", str(weights), "--output", str(out), "--arch", "tadaformer_tiny",
        "--num-classes", "5", "--num-frames", "8", "--set", f"width={WIDTH}",
        "--set", f"depth={LAYERS}", "--set", f"num_heads={HEADS}", "--set", f"patch_size={PATCH}",
        "--set", f"image_size={IMAGE}", "--set", "rf_head_dim=8"])
    assert code == 0
    variables, cfg = checkpoint_io.load_variables(str(out))
    model = build_model(cfg)

    video = np.random.default_rng(0).normal(size=(2, 8, IMAGE, IMAGE, 3)).astype(np.float32)
    _, state = jax.jit(lambda v, x: model.apply(v, x, method="features",
                                                mutable=["intermediates"]))(variables, video)
    tokens = state["intermediates"]["backbone"]["frame_class_tokens"][0]  # (B, T/2, W)
    ln_post = variables["params"]["backbone"]["ln_post"]
    mean = tokens.mean(-1, keepdims=True)
    var = ((tokens - mean) ** 2).mean(-1, keepdims=True)
    ours = (tokens - mean) / jnp.sqrt(var + 1e-5) * ln_post["scale"] + ln_post["bias"]

    frames = video[:, ::2].reshape(-1, IMAGE, IMAGE, 3).transpose(0, 3, 1, 2)
    with torch.no_grad():
        theirs = model_hf(pixel_values=torch.from_numpy(frames)).pooler_output.numpy()
    np.testing.assert_allclose(np.asarray(ours).reshape(theirs.shape), theirs, atol=1e-4, rtol=0)

    # The backbone returns CLIP's post-LayerNorm of the class token averaged over the
    # token frames (the mean before the norm, as the original pools).
    with torch.no_grad():
        hidden = model_hf(pixel_values=torch.from_numpy(frames)).last_hidden_state[:, 0]
        pooled = model_hf.post_layernorm(hidden.reshape(2, -1, WIDTH).mean(1)).numpy()
    features = jax.jit(lambda v, x: model.apply(v, x, method="features"))(variables, video)
    np.testing.assert_allclose(features, pooled, atol=1e-4, rtol=0)
