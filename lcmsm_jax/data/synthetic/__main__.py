"""`python -m lcmsm_jax.data.synthetic`: the `lcmsm-synthetic` command."""

import sys

from lcmsm_jax import config_cli
from lcmsm_jax.data.synthetic.cli import PROG, main

if __name__ == "__main__":
    sys.exit(config_cli.run_main(PROG, sys.argv[1:], main))
