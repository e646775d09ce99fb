"""TAdaConvNeXtV2-T on Kinetics-400, from ConvNeXt ImageNet-1K weights.

Reproduces: 79.6 (16 frames) / 80.8 (32) top-1, 4 clips x 3 crops (`tadaconvnextv2_tiny_k400_16f.yaml`).

  python -m tadax.convert convnext --input convnext_tiny_1k_224_ema.pth \
      --arch tadaconvnextv2_tiny --output ckpt/convnext_t_in1k
  python train.py --config configs/tadaconvnextv2_tiny.py \
      --config.init.checkpoint=ckpt/convnext_t_in1k --config.data.data_dir=/data/kinetics400

The original's comment gives a global batch of 512 (128 x 4 machines). Cost: 100 epochs, 47 GFLOPs per 16-frame clip: the original used 32 GPUs.
"""

from configs import common


def get_config(arg: str = ""):
    a = common.parse_arg(arg, frames=16)
    return common.convnext_recipe(
        name=f"tadaconvnextv2_tiny_k400_{a['frames']}f", arch="tadaconvnextv2_tiny",
        dataset="kinetics400", num_classes=400, frames=a["frames"], base_lr=0.0005, epochs=100,
        warmup_epochs=8, batch=512, drop_path=0.2,
        start_from=(
            "ConvNeXt-T ImageNet-1K weights, converted with `python -m tadax.convert "
            "convnext --input convnext_tiny_1k_224_ema.pth --arch tadaconvnextv2_tiny "
            "--output ckpt/convnext_t_in1k`"))
