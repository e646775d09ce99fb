"""TAdaConvNeXtV2-T on Something-Something V2, from its Kinetics-400 checkpoint.

Reproduces: 67.2 (16 frames) / 69.8 (32) top-1, 2 clips x 3 crops (`tadaconvnextv2_tiny_ssv2_16f.yaml`).
The original starts from the K400 model; the 400-class head is re-learnt:

  python train.py --config configs/tadaconvnextv2_tiny_ssv2.py \
      --config.init.checkpoint=ckpt/tadaconvnextv2_tiny_k400 --config.data.data_dir=/data/ssv2

The original's comment gives a global batch of 512 (128 x 4 machines). Cost: 64 epochs, 47 GFLOPs per 16-frame clip.
"""

from configs import common


def get_config(arg: str = ""):
    a = common.parse_arg(arg, frames=16)
    c = common.convnext_recipe(
        name=f"tadaconvnextv2_tiny_ssv2_{a['frames']}f", arch="tadaconvnextv2_tiny",
        dataset="ssv2", num_classes=174, frames=a["frames"], base_lr=0.0005, epochs=64,
        warmup_epochs=2.5, batch=512, drop_path=0.3,
        start_from=(
            "its Kinetics-400 model, converted with `python -m tadax.convert zoo --input "
            "tadaconvnextv2_tiny_k400_16f.pyth --output ckpt/tadaconvnextv2_tiny_k400` (or "
            "a K400 run)"))
    c.init.fresh = r"^head/"
    return c
