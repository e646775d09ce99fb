"""TAdaFormer-B/16 on Something-Something V2, fine-tuned from CLIP ViT-B/16.

Reproduces: 70.4 top-1 (16 frames), 71.3 (32 frames), 2 clips x 3 crops
(`tadaformer_b16_ssv2_16f.yaml`; temporal enhancement and double TAdaConv on).

  python train.py --config configs/tadaformer_b16_ssv2.py --config.init.checkpoint=ckpt/clip_b16 \
      --config.data.data_dir=/data/ssv2
  python train.py --config configs/tadaformer_b16_ssv2.py:frames=32 ...

Cost: 24 epochs of ~169k clips at 256 per step (~16k steps), 187 GFLOPs per
16-frame clip: the original used 8 GPUs.
"""

from configs import common


def get_config(arg: str = ""):
    a = common.parse_arg(arg, frames=16)
    return common.tadaformer_recipe(
        name=f"tadaformer_b16_ssv2_{a['frames']}f", arch="tadaformer_b16", dataset="ssv2",
        num_classes=174, frames=a["frames"], base_lr=5e-4, epochs=24, warmup_epochs=4,
        warmup_start_lr=1e-8, layer_decay=0.7, batch=256, ssv2=True,
        start_from=(
            "CLIP ViT-B/16, converted with `python -m tadax.convert clip --input "
            "ViT-B-16.pt --arch tadaformer_b16 --num-classes 174 --output ckpt/clip_b16`"))
