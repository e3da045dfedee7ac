"""``gendistill train-teacher``: train the shapes world's Stable-Diffusion-shaped teacher from scratch."""

from __future__ import annotations

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("train-teacher", help="train a shapes teacher (VP UNet, or with kind: flow an SD3 flow model)",
                       description="Train the tiny Stable-Diffusion-shaped shapes teacher: the VAE first, then the "
                                   "text encoder and UNet with caption dropout. A config with `kind: flow` "
                                   "(shapes-flow-teacher) trains the SD3-shaped flow-matching teacher instead, on "
                                   "the VP teacher's VAE and text encoder. Writes OUT/pipeline (a stock "
                                   "diffusers folder with a model card) and resumable OUT/checkpoints.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--config", default="shapes-teacher",
                   help="YAML config, or a shipped preset by name (shapes-teacher, shapes-teacher-tiny, "
                        "shapes-flow-teacher, shapes-flow-teacher-tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--export-only", action="store_true", help="export OUT/pipeline from the latest checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)  # an existing file there is one line, before any work or import
    from gendistill.config import load_config, read_yaml
    from gendistill.shipped import resolve_preset

    path = resolve_preset(args.config, "")
    if read_yaml(path).get("kind") == "flow":
        from gendistill.domains.shapes.flow_teacher import FlowTeacherConfig
        from gendistill.jobs.train_flow_teacher import export_flow_from_checkpoint, train_flow_teacher

        config = load_config(FlowTeacherConfig, path, args.overrides)
        export, train = export_flow_from_checkpoint, train_flow_teacher
    else:
        from gendistill.domains.shapes.teacher import TeacherConfig
        from gendistill.jobs.train_teacher import export_from_checkpoint, train_teacher

        config = load_config(TeacherConfig, path, args.overrides)
        export, train = export_from_checkpoint, train_teacher
    if args.export_only:
        pipeline = export(config, args.out)
    else:
        pipeline = train(config, args.out, resume=args.resume).pipeline_dir
    print(f"teacher exported to {pipeline}")
    return 0
