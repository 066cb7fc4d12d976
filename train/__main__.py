"""``python -m train``: the main job (see train/cli.py for the options and the override syntax).

Multi-process runs (SLURM, TPU pods, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)
start jax.distributed first, before anything touches a device (train/distributed.py).
"""

import sys

from train.distributed import initialize

if __name__ == "__main__":
    initialize()
    from train.cli import main

    sys.exit(main())
