"""Print class pixel shares, RCS candidate counts and sampling probabilities of a dataset.

Reads the statistics `lcmsm-prepare` wrote, so the effect of the RCS settings can be
checked before training:

  python tools/rcs_stats.py --root /data/gta5 [--split all] [--temperature 0.01] \
      [--min-pixels 3000]
"""

import sys

import numpy as np
from absl import flags

from lcmsm_jax import config_cli
from lcmsm_jax.data import manifest, prepare
from lcmsm_jax.progress import say

PROG = "tools/rcs_stats.py"


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("root", None, "Folder holding lcmsm_manifest.json.", flag_values=fv)
    flags.DEFINE_string("split", None, "Split (default: the first one).", flag_values=fv)
    flags.DEFINE_float("temperature", 0.01, "RCS temperature T.", flag_values=fv)
    flags.DEFINE_integer("min_pixels", 3000, "RCS candidate threshold (pixels of the class).",
                         flag_values=fv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Print the table; usage errors: message and exit 2, missing statistics raise."""
    try:
        args = config_cli.parse(
            PROG, argv, _define, required=("root",), takes_config=False,
            description=__doc__.split("\n")[0],
            examples=[f"python {PROG} --root /data/gta5 --temperature 0.01 --min-pixels 3000"],
        )  # fmt: skip
        if args.temperature <= 0:
            raise config_cli.UsageError(f"--temperature {args.temperature}: must be above 0")
    except config_cli.UsageError as err:
        return config_cli.report_usage(PROG, err)
    stats = manifest.load_stats(args.root)
    split = args.split or next(iter(stats["splits"]))
    if split not in stats["splits"]:
        raise manifest.ManifestError(
            f"{args.root}: no statistics for split {split!r}; have {sorted(stats['splits'])}"
        )
    counts = np.asarray(stats["splits"][split]["class_pixels"], np.int64)
    say(f"{stats['dataset']}/{split}: {len(counts)} images, T={args.temperature}")
    say(prepare.class_table(counts, args.temperature, args.min_pixels))
    return 0


if __name__ == "__main__":
    sys.exit(config_cli.run_main(PROG, sys.argv[1:], main))
