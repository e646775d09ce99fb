"""`python -m tadax.prepare LAYOUT ...`: prepare a video dataset as sharded TFRecords (see `cli`)."""

import sys

from tadax.prepare.cli import main

if __name__ == "__main__":
    sys.exit(main())
