"""``python -m experiments.sweep``: the command line lives in experiments/sweep/cli.py."""

import sys

from experiments.sweep.cli import main

sys.exit(main())
