"""PyTorch checkpoint -> orbax model checkpoint; same as the `lcmsm-convert` command."""

import sys

from lcmsm_jax import convert

if __name__ == "__main__":
    sys.exit(convert.main(sys.argv[1:]))
