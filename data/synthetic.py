"""Write the synthetic temporal-order dataset: real .mp4 files + Kinetics-layout CSVs.

  python data/synthetic.py --out /tmp/synthetic --train 1024 --val 256
  python -m tadax.prepare kinetics --root /tmp/synthetic/videos --out /tmp/synthetic/tfrecords \
      --split train=/tmp/synthetic/train.csv --split val=/tmp/synthetic/val.csv --short-side 0

The pipeline also generates and prepares it by itself on first use
(`data.dataset = 'synthetic'`, cached under `data.cache_dir`).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tadax.prepare import synthetic  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=1024, help="videos in the train split")
    p.add_argument("--val", type=int, default=256, help="videos in the val split")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="frame height = width (even)")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    csvs = synthetic.write_dataset(args.out, {"train": args.train, "val": args.val},
                                   frames=args.frames, size=args.size, fps=args.fps,
                                   seed=args.seed)
    for split, path in sorted(csvs.items()):
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
