"""PyTorch checkpoint -> orbax model checkpoint; same as the `lcmsm-convert` command."""

import sys

from lcmsm_jax import cli

if __name__ == "__main__":
    sys.exit(cli.run("lcmsm-convert", sys.argv[1:]))
