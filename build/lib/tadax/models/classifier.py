"""A video backbone with the original's classification head."""

from typing import Any

import flax.linen as nn
import jax

from tadax.models.layers import torch_default_bias, torch_default_kernel


class ClassificationHead(nn.Module):
    """`BaseHead` of the original: dropout, then a linear layer `out`. `(B, D) -> (B, classes)`."""
    num_classes: int
    dropout_rate: float

    @nn.compact
    def __call__(self, features: jax.Array, train: bool) -> jax.Array:
        x = nn.Dropout(self.dropout_rate)(features, deterministic=not train)
        return nn.Dense(self.num_classes, kernel_init=torch_default_kernel,
                        bias_init=torch_default_bias(features.shape[-1]), name="out")(x)


class VideoClassifier(nn.Module):
    """Backbone + head: `(B, T, H, W, 3)` normalised video -> `(B, classes)` logits.

    Train mode needs the rng streams 'dropout' and 'drop_path' and, for
    models with BatchNorm, `mutable=['batch_stats']`. Probabilities (the
    original's eval output) are `jax.nn.softmax(logits)`.
    """
    backbone: nn.Module
    num_classes: int
    dropout_rate: float

    def setup(self):
        self.head = ClassificationHead(self.num_classes, self.dropout_rate)

    def __call__(self, video: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.backbone(video, train), train)

    def features(self, video: jax.Array, train: bool = False) -> Any:
        """Pooled backbone features `(B, D)`, the head's input."""
        return self.backbone(video, train)
