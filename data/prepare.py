"""Prepare a video dataset as sharded DMVR TFRecords: the checkout's `python -m tadax.prepare`.

  python data/prepare.py kinetics --root /data/k400/videos --out /data/k400/tfrecords \
      --split train=/data/k400/train.csv --split val=/data/k400/validate.csv
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tadax.prepare.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="data/prepare.py"))
