"""Batch-level mixup / cutmix on host batches (numpy), timm's 'batch' mode.

One mixing coefficient per batch; each clip is mixed with the clip at the
mirrored position of the batch (`x[::-1]`). Cutmix pastes the same box on all
frames of a clip, and the coefficient is corrected to the pasted area. Soft
targets carry no label smoothing (the loss applies it).
"""

import numpy as np


def mixing_enabled(data_cfg) -> bool:
    """Whether the train batches carry mixed clips and their 'label_soft' targets."""
    return data_cfg.mixup_alpha > 0 or data_cfg.cutmix_alpha > 0


def _cut_box(rng: np.random.Generator, height: int, width: int, lam: float):
    """(y0, y1, x0, x1) of a box with area ~ (1 - lam) of the frame, clipped to it."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = rng.integers(height), rng.integers(width)
    y0, y1 = np.clip(cy - ch // 2, 0, height), np.clip(cy + ch // 2, 0, height)
    x0, x1 = np.clip(cx - cw // 2, 0, width), np.clip(cx + cw // 2, 0, width)
    return y0, y1, x0, x1


def mix_batch(batch: dict, data_cfg, rng: np.random.Generator) -> dict:
    """{'video': (B, T, H, W, 3), 'label': (B,)} -> the same plus 'label_soft': (B, C) float32.

    With probability `mixup_prob` the batch is mixed: cutmix (if `cutmix_alpha` > 0,
    and chosen with `mixup_switch_prob` when mixup is also on) or mixup.
    """
    video, label = batch["video"], batch["label"]
    onehot = np.eye(data_cfg.num_classes, dtype=np.float32)[label]
    out = dict(batch)
    lam = 1.0
    if rng.random() < data_cfg.mixup_prob:
        use_cutmix = data_cfg.cutmix_alpha > 0 and (
            data_cfg.mixup_alpha <= 0 or rng.random() < data_cfg.mixup_switch_prob)
        if use_cutmix:
            lam = float(rng.beta(data_cfg.cutmix_alpha, data_cfg.cutmix_alpha))
            y0, y1, x0, x1 = _cut_box(rng, video.shape[2], video.shape[3], lam)
            mixed = video.copy()
            mixed[:, :, y0:y1, x0:x1] = video[::-1, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(video.shape[2] * video.shape[3])
        else:
            lam = float(rng.beta(data_cfg.mixup_alpha, data_cfg.mixup_alpha))
            mixed = (video.astype(np.float32) * lam
                     + video[::-1].astype(np.float32) * (1.0 - lam)).astype(video.dtype)
        out["video"] = mixed
    out["label_soft"] = (onehot * lam + onehot[::-1] * (1.0 - lam)).astype(np.float32)
    return out
