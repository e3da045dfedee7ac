"""The shipped teacher as a zero-shot judge reads the shape of held-out renders (the sketch target's judge)."""

import torch

from gendistill.backends.loading import load_pipeline
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.backends.zero_shot_judge import ZeroShotJudge
from gendistill.domains.shapes.dataset import fixed_split
from gendistill.domains.shapes.evaluation import judged_shapes


def test_the_teacher_judges_the_shape_of_held_out_renders():
    batch = fixed_split(5, "heldout")
    judge = ZeroShotJudge(TextToImageModel(load_pipeline("shapes-teacher")), draws=8)
    assert torch.equal(judged_shapes(judge, batch.images), batch.shape_ids)
