"""`lcmsm-synthetic` (also `python -m lcmsm_jax.data.synthetic`): write the synthetic scenes
as a GTA5 or Cityscapes dataset, or a preview picture of both domains."""

from __future__ import annotations

from absl import flags

from lcmsm_jax import atomic, config_cli
from lcmsm_jax.data.synthetic.exporter import EXPORT_LAYOUTS, export, write_preview
from lcmsm_jax.data.synthetic.scene import DEFAULT_SIZE, DOMAINS, VARIANTS
from lcmsm_jax.progress import say

PROG = "lcmsm-synthetic"
DESCRIPTION = (
    "Write the synthetic two-domain street scenes to disk in the GTA5 or Cityscapes layout "
    "(--export), or a picture of a few scenes of both domains (--preview)."
)
EXAMPLES = (
    "lcmsm-synthetic --export --domain source --layout gta5 --out data/syn_gta5 --num-images 2000",
    "lcmsm-synthetic --export --domain target --layout cityscapes --out data/syn_cs "
    "--num-images 2000",
    "lcmsm-synthetic --export --domain target --layout cityscapes --split val --seed 1 "
    "--out data/syn_cs --num-images 500",
    "lcmsm-synthetic --preview previews.png",
    "lcmsm-synthetic --preview far.png --variant far_objects --height 512 --width 1024",
)


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_bool("export", False, "Write a dataset to --out.", flag_values=fv)
    flags.DEFINE_string("preview", None, "Write a picture of a few scenes to this PNG file.",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_enum("domain", "source", DOMAINS, "Which domain to write.", flag_values=fv)
    flags.DEFINE_enum("layout", "gta5", EXPORT_LAYOUTS, "On-disk layout.", flag_values=fv)
    flags.DEFINE_string("split", "train", "Cityscapes split folder (train, val, ...).",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_string("out", None, "Dataset root to create (or add a split to).",
                        flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("num_images", None, "Images to write (default: 500 for --export, 4 "
                         "for --preview).", lower_bound=1, flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("height", DEFAULT_SIZE[0], "Image height.", lower_bound=16,
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("width", DEFAULT_SIZE[1], "Image width.", lower_bound=16,
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("seed", 0, "Scene seed (use another one for val).", lower_bound=0,
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_enum("variant", "default", VARIANTS, "Scene variant (far_objects: small "
                      "objects far down the street).", flag_values=fv)  # fmt: skip
    flags.DEFINE_bool("overwrite", False, "Replace this split if it exists.", flag_values=fv)
    flags.DEFINE_bool("quiet", False, "No progress lines.", flag_values=fv)


def main(argv: list[str] | None = None) -> int:
    """The command (`argv` without the program name); returns the exit status.

    A bad command line raises config_cli.UsageError; an export that finds its folders taken
    raises FileExistsError, bad values ValueError (`lcmsm_jax/cli.py` reports both)."""
    args = config_cli.parse(PROG, argv, _define, description=DESCRIPTION, examples=EXAMPLES,
                            takes_config=False)  # fmt: skip
    if args.export == (args.preview is not None):
        raise config_cli.UsageError(f"{PROG}: pass one of --export or --preview PNG")
    size = (args.height, args.width)
    if args.preview is not None:
        atomic.check_output_file(args.preview, "--preview", suffix=".png")
        path = write_preview(args.preview, args.num_images or 4, size, args.seed, args.variant)
        say(f"wrote {path}")
        return 0
    if not args.out:
        raise config_cli.UsageError(f"{PROG}: --export needs --out DIR")
    atomic.check_output_folder(args.out, "--out")  # before any scene is rendered
    root = export(
        args.domain,
        args.out,
        args.num_images or 500,
        layout=args.layout,
        split=args.split,
        size=size,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=None if args.quiet else "stdout",
        variant=args.variant,
    )
    say(f"wrote {root}")
    return 0
