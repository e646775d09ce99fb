"""Serving artefacts of a model: a serialized `jax.export` (StableHLO) and a TensorFlow SavedModel.

Both compute the eval-mode logits `(B, num_classes)` of a video batch
`(B, T, H, W, 3)` float32 (normalised as for the model), with B symbolic:
any batch size runs without re-tracing or re-exporting; T, H and W are the
model config's `num_frames` and `image_size`. The weights are part of the
artefact, so serving needs neither tadax nor its checkpoints.

  # jax.export: any JAX install
  exported = jax.export.deserialize(bytearray(open("model.jax_export", "rb").read()))
  logits = exported.call(video)
  # SavedModel: TensorFlow / TF Serving
  logits = tf.saved_model.load("saved_model").signatures["serving_default"](video=video)["logits"]
"""

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from tadax.models import build_model

# Where an artefact can run: the lowering is made for each of these.
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def eval_logits_fn(variables: Mapping[str, Any], model_cfg: ml_collections.ConfigDict
                   ) -> Callable[[jax.Array], jax.Array]:
    """video `(B, T, H, W, 3)` -> logits `(B, num_classes)` float32, weights closed over."""
    model = build_model(model_cfg)
    return lambda video: model.apply(variables, video).astype(jnp.float32)


def video_spec_shape(model_cfg: ml_collections.ConfigDict) -> str:
    """The input shape with its symbolic batch, as `jax.export` and jax2tf spell it."""
    return f"(b, {model_cfg.num_frames}, {model_cfg.image_size}, {model_cfg.image_size}, 3)"


def export_jax(variables: Mapping[str, Any], model_cfg: ml_collections.ConfigDict,
               platforms: Sequence[str] = DEFAULT_PLATFORMS) -> jax.export.Exported:
    """The eval-mode forward pass, weights included, lowered to StableHLO for `platforms`."""
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, model_cfg.num_frames, model_cfg.image_size,
                                 model_cfg.image_size, 3), jnp.float32)
    fn = jax.jit(eval_logits_fn(variables, model_cfg))
    return jax.export.export(fn, platforms=tuple(platforms))(spec)


def write_jax_export(variables: Mapping[str, Any], model_cfg: ml_collections.ConfigDict,
                     output: str, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> None:
    """Writes `export_jax(...).serialize()` to the file `output` (local or gs://)."""
    data = export_jax(variables, model_cfg, platforms).serialize()
    epath.Path(output).write_bytes(bytes(data))


def write_saved_model(variables: Mapping[str, Any], model_cfg: ml_collections.ConfigDict,
                      output: str, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> None:
    """Writes a TensorFlow SavedModel to the directory `output` (local or gs://).

    Signature `serving_default`: `video` float32 `(None, T, H, W, 3)` ->
    `{'logits': (None, num_classes)}`. The weights are tf.Variables (not
    graph constants, which protobuf limits to 2 GB); the computation is the
    jax2tf-converted StableHLO of `export_jax`.
    """
    import tensorflow as tf
    from jax.experimental import jax2tf

    model = build_model(model_cfg)
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(
        tf.Variable, jax.tree_util.tree_map(np.asarray, dict(variables)))
    forward = jax2tf.convert(
        lambda v, video: model.apply(v, video).astype(jnp.float32),
        polymorphic_shapes=[None, video_spec_shape(model_cfg)], with_gradient=False,
        native_serialization_platforms=tuple(platforms))
    spec = tf.TensorSpec((None, model_cfg.num_frames, model_cfg.image_size,
                          model_cfg.image_size, 3), tf.float32, name="video")

    @tf.function(input_signature=[spec], autograph=False)
    def serve(video):
        return {"logits": forward(module.variables_tree, video)}

    module.serve = serve
    tf.saved_model.save(module, str(output), signatures={"serving_default": serve})
