"""Print class pixel shares, RCS candidate counts and sampling probabilities of a dataset.

Reads the statistics `lcmsm-prepare` wrote, so the effect of the RCS settings can be
checked before training:

  python tools/rcs_stats.py --root /data/gta5 [--split all] [--temperature 0.01] \
      [--min-pixels 3000]
"""

import argparse
import sys

import numpy as np

from lcmsm_jax.data import manifest, prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="folder holding lcmsm_manifest.json")
    parser.add_argument("--split", default=None, help="split (default: the first one)")
    parser.add_argument("--temperature", type=float, default=0.01)
    parser.add_argument("--min-pixels", type=int, default=3000)
    args = parser.parse_args(argv)
    stats = manifest.load_stats(args.root)
    split = args.split or next(iter(stats["splits"]))
    if split not in stats["splits"]:
        print(f"no statistics for split {split!r}; have {sorted(stats['splits'])}")
        return 1
    counts = np.asarray(stats["splits"][split]["class_pixels"], np.int64)
    print(f"{stats['dataset']}/{split}: {len(counts)} images, T={args.temperature}")
    print(prepare.class_table(counts, args.temperature, args.min_pixels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
