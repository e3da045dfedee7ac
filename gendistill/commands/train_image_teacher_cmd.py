"""``gendistill train-image-teacher``: fine-tune the shapes teacher into an image- and camera-conditioned one
(Isotropic3D's first stage, in miniature)."""

from __future__ import annotations

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("train-image-teacher",
                       help="fine-tune the shapes teacher on (CLIP image embedding, camera) -> view pairs",
                       description="Isotropic3D's view-conditioned teacher in miniature: the shapes teacher's UNet "
                                   "conditioned on a reference render's CLIP image embedding (one cross-attention "
                                   "token) and the target camera (class-embedding MLP), trained on pairs of renders "
                                   "of one object from two cameras, on the one trainer. Writes OUT/teacher (stock "
                                   "diffusers unet/, vae/, scheduler/ and a model card) and resumable "
                                   "OUT/checkpoints.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--config", default="shapes-image-teacher", help="YAML config, or a shipped preset by name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set steps=200 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    p.add_argument("--export-only", action="store_true", help="export OUT/teacher from the newest checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.run_dir import check_out_dir

    check_out_dir(args.out)
    from gendistill.config import load_config
    from gendistill.domains.shapes.image_teacher import ImageTeacherConfig
    from gendistill.jobs.train_image_teacher import export_from_checkpoint, train_image_teacher
    from gendistill.shipped import resolve_preset

    config = load_config(ImageTeacherConfig, resolve_preset(args.config, ""), args.overrides)
    if args.export_only:
        print(f"image teacher exported to {export_from_checkpoint(config, args.out)}")
        return 0
    result = train_image_teacher(config, args.out, resume=args.resume)
    print(f"image teacher exported to {result.teacher_dir} ({result.steps} steps, final mse {result.final_mse:.4f})")
    return 0
