"""Speed benchmarks (see `lcmsm_jax/benchmark.py`); same as the `lcmsm-benchmark` command."""

import sys

from lcmsm_jax import benchmark

if __name__ == "__main__":
    sys.exit(benchmark.main(sys.argv[1:]))
