"""TAdaConvNeXtV2-B on Kinetics-400, from ConvNeXt ImageNet-1K weights.

Reproduces: 81.4 (16 frames) / 82.3 (32) top-1, 4 clips x 3 crops (`tadaconvnextv2_base_k400_16f.yaml`).

  python -m tadax.convert convnext --input convnext_base_1k_224_ema.pth \
      --arch tadaconvnextv2_base --output ckpt/convnext_b_in1k
  python train.py --config configs/tadaconvnextv2_base.py \
      --config.init.checkpoint=ckpt/convnext_b_in1k --config.data.data_dir=/data/kinetics400

The original's comment gives a global batch of 256 (64 x 4 machines). Cost: 100 epochs, 162 GFLOPs per 16-frame clip: the original used 32 GPUs.
"""

from configs import common


def get_config(arg: str = ""):
    a = common.parse_arg(arg, frames=16)
    return common.convnext_recipe(
        name=f"tadaconvnextv2_base_k400_{a['frames']}f", arch="tadaconvnextv2_base",
        dataset="kinetics400", num_classes=400, frames=a["frames"], base_lr=0.00025, epochs=100,
        warmup_epochs=8, batch=256, drop_path=0.6,
        start_from=(
            "ConvNeXt-B ImageNet-1K weights, converted with `python -m tadax.convert "
            "convnext --input convnext_base_1k_224_ema.pth --arch tadaconvnextv2_base "
            "--output ckpt/convnext_b_in1k`"))
