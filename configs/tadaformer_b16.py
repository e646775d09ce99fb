"""TAdaFormer-B/16 on Kinetics-400, fine-tuned from CLIP ViT-B/16.

Reproduces: 84.5 top-1 (16 frames, 4 clips x 3 crops; the original's zoo,
`tadaformer_b16_k400_16f.yaml`); 86.6 when started from the K710 checkpoint
(`--config.init.checkpoint=ckpt/tadaformer_b16_k710`).

  python -m tadax.convert clip --input ViT-B-16.pt --arch tadaformer_b16 --num-classes 400 \
      --output ckpt/clip_b16
  python train.py --config configs/tadaformer_b16.py --config.init.checkpoint=ckpt/clip_b16 \
      --config.data.data_dir=/data/kinetics400
  python train.py --config configs/tadaformer_b16.py:frames=32 ...     # 32-frame variant

Cost: 30 epochs of ~240k clips at 256 per step (~28k steps), 153 GFLOPs
(multiply-adds) per 16-frame clip forward: the original used 8 GPUs. On accelerators
`--config.model.dtype=bfloat16` computes in bf16 (fp32 parameters), and on NVIDIA GPUs
`--config.model.attention_impl=cudnn` adds cuDNN's fused attention.
"""

from configs import common


def get_config(arg: str = ""):
    a = common.parse_arg(arg, frames=16)
    return common.tadaformer_recipe(
        name=f"tadaformer_b16_k400_{a['frames']}f", arch="tadaformer_b16", dataset="kinetics400",
        num_classes=400, frames=a["frames"], base_lr=5e-5, epochs=30, warmup_epochs=5,
        warmup_start_lr=1e-6, layer_decay=0.7, batch=256,
        start_from=(
            "CLIP ViT-B/16, converted with `python -m tadax.convert clip --input "
            "ViT-B-16.pt --arch tadaformer_b16 --num-classes 400 --output ckpt/clip_b16`"))
