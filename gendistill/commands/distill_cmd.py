"""``gendistill distill``: make a few-step student from a diffusers teacher (default: DMD2 on the shapes teacher)."""

from __future__ import annotations

import shlex
import sys

from gendistill.commands.parsing import DefaultsFormatter

DEFAULT_PRESET = "shapes-dmd2"
"""What ``gendistill distill`` trains with no CONFIG: the recipe of the shipped 1-step DMD2 student."""


def add_parser(sub) -> None:
    p = sub.add_parser("distill", help="distil a teacher into a 1-4 step student (DMD2, LCM, progressive)",
                       description="Train a few-step student and export it as a diffusers folder (DIR/pipeline) "
                                   "with metrics.json, grid.png, curves.png and the resolved config.yaml. With no "
                                   f"CONFIG: the {DEFAULT_PRESET} preset (DMD2 with its GAN term on the shipped "
                                   "shapes teacher, the recipe of the shipped 1-step student).",
                       formatter_class=DefaultsFormatter)
    p.add_argument("config", nargs="?", default=None,
                   help="YAML config, or a shipped preset by name (e.g. shapes-lcm; see configs/distill/); "
                        f"none: {DEFAULT_PRESET}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.steps=100 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints/latest")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)  # an existing file there is one line, before any work or import
    from gendistill.config import load_config
    from gendistill.jobs.distill.config import DistillConfig
    from gendistill.jobs.distill.run import run_distill
    from gendistill.shipped import resolve_preset

    preset = resolve_preset(args.config or DEFAULT_PRESET, "distill")
    config = load_config(DistillConfig, preset, args.overrides)  # fails on bad keys before any work
    command = "gendistill " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    result = run_distill(config, args.out, resume=args.resume, command=command,
                         log=lambda line: print(line, file=sys.stderr))
    if result.written:  # on several processes only rank 0 writes the student
        print(f"student: {result.pipeline} (trained in {result.train_seconds:.0f} s)")
    return 0
