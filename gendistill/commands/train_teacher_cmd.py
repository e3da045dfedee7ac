"""``gendistill train-teacher``: train the shapes world's Stable-Diffusion-shaped teacher from scratch."""

from __future__ import annotations

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("train-teacher", help="train the shapes teacher (VAE, then text encoder + UNet)",
                       description="Train the tiny Stable-Diffusion-shaped shapes teacher: the VAE first, then the "
                                   "text encoder and UNet with caption dropout. Writes OUT/pipeline (a stock "
                                   "diffusers folder with a model card) and resumable OUT/checkpoints.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--config", default="shapes-teacher",
                   help="YAML config, or a shipped preset by name (shapes-teacher, shapes-teacher-tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--export-only", action="store_true", help="export OUT/pipeline from the latest checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)  # an existing file there is one line, before any work or import
    from gendistill.config import load_config
    from gendistill.domains.shapes.teacher import TeacherConfig
    from gendistill.jobs.train_teacher import export_from_checkpoint, train_teacher
    from gendistill.shipped import resolve_preset

    config = load_config(TeacherConfig, resolve_preset(args.config, ""), args.overrides)
    if args.export_only:
        pipeline = export_from_checkpoint(config, args.out)
    else:
        pipeline = train_teacher(config, args.out, resume=args.resume).pipeline_dir
    print(f"teacher exported to {pipeline}")
    return 0
