"""The shipped shapes CLIP and image/camera teacher: they load with their stock libraries and fit together."""

import json

import torch

from gendistill.shipped import shipped_model


def test_the_shipped_clip_reads_shape_and_colour_of_fresh_renders():
    from gendistill.backends.open_clip_model import ClipImageEncoder
    from gendistill.domains.shapes.clip_training import zero_shot_accuracy

    encoder = ClipImageEncoder.load(shipped_model("shapes-clip"))
    result = zero_shot_accuracy(encoder.model, encoder.tokenizer, n=40, seed=7)  # not the card's seed
    assert result.shape_accuracy >= 0.95 and result.colour_accuracy >= 0.95


def test_the_shipped_teacher_is_a_stock_unet_that_reads_the_shipped_clip():
    from diffusers import UNet2DConditionModel

    from gendistill.backends.open_clip_model import ClipImageEncoder

    folder = shipped_model("shapes-image-teacher")
    card = json.loads((folder / "gendistill.json").read_text())
    encoder = ClipImageEncoder.load(shipped_model(card["image_encoder"]))
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    assert unet.config.encoder_hid_dim == encoder.embed_dim and unet.config.class_embed_type == "projection"
    with torch.no_grad():
        out = unet(torch.randn(1, 4, 16, 16), 500, encoder_hidden_states=encoder.embed_images(torch.ones(1, 3, 64, 64))[:, None],
                   class_labels=torch.eye(4).flatten()[None]).sample
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()
    assert card["evaluation"]["image"]["prompt_accuracy"] >= 0.9 > 0.2 > card["evaluation"]["null"]["prompt_accuracy"]
