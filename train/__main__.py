"""``python -m train``: the main job (see train/cli.py for the options and the override syntax)."""

import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main())
