"""The ablation ladder on one benchmark over several seeds (see `lcmsm_jax/ladder.py`).

  python tools/ladder.py --config configs/demo.py --out runs/ladder --seeds 0,1

writes runs/ladder/ladder.md, ladder.json (mean, per seed, gap closure) and ladder.png.
"""

import sys

from lcmsm_jax import ladder

if __name__ == "__main__":
    sys.exit(ladder.main(sys.argv[1:]))
