"""TAdaFormer-L/14 on Kinetics-400, fine-tuned from CLIP ViT-L/14.

Reproduces: 87.6 top-1 (16 frames, 4 clips x 3 crops, `tadaformer_l14_k400_16f.yaml`);
from the K710 checkpoints 88.9 / 89.5 / 89.9 at 16 / 32 / 64 frames
(`--config.init.checkpoint=ckpt/tadaformer_l14_k710_32f`, `:frames=32`).

  python train.py --config configs/tadaformer_l14.py --config.init.checkpoint=ckpt/clip_l14 \
      --config.data.data_dir=/data/kinetics400
  python train.py --config configs/tadaformer_l14.py:frames=64 --config.model.remat=full ...

The original's global batch is 64 (16 GPUs x 4). Cost: 24 epochs (~90k steps),
703 GFLOPs per 16-frame clip; remat (`--config.model.remat=full`) and bf16
(`--config.model.dtype=bfloat16`) fit it on 16 GB accelerators; on NVIDIA GPUs
`--config.model.attention_impl=cudnn` (bf16 only) uses cuDNN's fused attention.
The 24 layers run under `nn.scan` (`model.scan_layers`): the train step compiles
in 8 s instead of 41 s on the 2-core CPU (`python -m tadax.bench --mode memory
--models tadaformer_l14 --frames 16 --dtypes float32 --remat none`).
"""

from configs import common


def get_config(arg: str = ""):
    a = common.parse_arg(arg, frames=16)
    config = common.tadaformer_recipe(
        name=f"tadaformer_l14_k400_{a['frames']}f", arch="tadaformer_l14", dataset="kinetics400",
        num_classes=400, frames=a["frames"], base_lr=2e-5, epochs=24, warmup_epochs=5,
        warmup_start_lr=1e-6, layer_decay=0.85, batch=64,
        start_from=(
            "CLIP ViT-L/14, converted with `python -m tadax.convert clip --input "
            "ViT-L-14.pt --arch tadaformer_l14 --num-classes 400 --output ckpt/clip_l14`"))
    config.model.scan_layers = True
    return config
