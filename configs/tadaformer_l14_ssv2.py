"""TAdaFormer-L/14 on Something-Something V2, fine-tuned from CLIP ViT-L/14.

Reproduces: 72.4 top-1 (16 frames), 73.6 (32 frames), 2 clips x 3 crops
(`tadaformer_l14_ssv2_16f.yaml`: drop path 0.2, temporal enhancement, double TAdaConv).

  python train.py --config configs/tadaformer_l14_ssv2.py --config.init.checkpoint=ckpt/clip_l14 \
      --config.data.data_dir=/data/ssv2

The original's global batch is 128. Cost: 24 epochs (~32k steps), 858 GFLOPs
per 16-frame clip: the original used 8 GPUs.
The 24 layers run under `nn.scan` (`model.scan_layers`): the train step compiles
in 8 s instead of 41 s on the 2-core CPU (`python -m tadax.bench --mode memory
--models tadaformer_l14 --frames 16 --dtypes float32 --remat none`).
"""

from configs import common


def get_config(arg: str = ""):
    a = common.parse_arg(arg, frames=16)
    config = common.tadaformer_recipe(
        name=f"tadaformer_l14_ssv2_{a['frames']}f", arch="tadaformer_l14", dataset="ssv2",
        num_classes=174, frames=a["frames"], base_lr=2.5e-4, epochs=24, warmup_epochs=4,
        warmup_start_lr=1e-8, layer_decay=0.85, batch=128, drop_path=0.2, ssv2=True,
        start_from=(
            "CLIP ViT-L/14, converted with `python -m tadax.convert clip --input "
            "ViT-L-14.pt --arch tadaformer_l14 --num-classes 174 --output ckpt/clip_l14`"))
    config.model.scan_layers = True
    return config
