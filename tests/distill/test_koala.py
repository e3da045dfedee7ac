"""KOALA / BK-SDM compression: the student's config, its initialisation from corresponding teacher layers, the
feature sites and the recipe's loss terms."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from gendistill.distill.compression import (StudentArchitecture, compressed_unet, parameter_count,
                                            student_config)
from gendistill.distill.features import FeatureTap, feature_loss, feature_sites
from gendistill.errors import UserError


def three_stage_unet(layers_per_block=2, transformer_layers_per_block=1, seed=0):
    """The shapes teacher's layout (a plain 16x16 stage, two attention stages), tiny widths."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=4, norm_num_groups=4, transformer_layers_per_block=transformer_layers_per_block).eval()


def run(unet, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 700]), c).sample


def test_the_empty_architecture_is_an_exact_copy_of_the_teacher():
    teacher = three_stage_unet()
    student, layer_map = compressed_unet(teacher, StudentArchitecture())
    assert layer_map.fresh == [] and all(k == v for k, v in layer_map.teacher_of.items())
    assert torch.equal(run(student), run(teacher))


def test_student_config_applies_each_removal():
    config = student_config(dict(three_stage_unet(transformer_layers_per_block=[1, 3, 3]).config),
                            StudentArchitecture([1, 2, 0], 2, True, ["up_blocks.1"]))
    assert config["layers_per_block"] == [1, 2, 0] and config["mid_block_type"] is None
    assert config["transformer_layers_per_block"] == [1, 2, 2]
    assert config["up_block_types"] == ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    student = UNet2DConditionModel.from_config(config)
    assert student.mid_block is None and [len(b.resnets) for b in student.up_blocks] == [1, 3, 2]


@pytest.mark.parametrize("arch, message", [
    (StudentArchitecture(layers_per_block=3), "exceeds the teacher's"),
    (StudentArchitecture(layers_per_block=[1, 0, 1]), "cannot be 0 for stage 1"),
    (StudentArchitecture(layers_per_block=[1, 1]), "has 2 entries; the teacher has 3 stages"),
    (StudentArchitecture(without_attention=["mid_block"]), "allowed: down_blocks.i or up_blocks.i"),
    (StudentArchitecture(without_attention=["up_blocks.3"]), "allowed: down_blocks.i or up_blocks.i"),
])
def test_impossible_architectures_are_user_errors(arch, message):
    with pytest.raises(UserError, match=message):
        student_config(dict(three_stage_unet().config), arch)


def test_compressed_layers_start_from_their_teacher_partners():
    teacher = three_stage_unet(layers_per_block=2)
    arch = StudentArchitecture(layers_per_block=[1, 1, 0], remove_mid_block=True)
    student, layer_map = compressed_unet(teacher, arch)
    assert parameter_count(student) < 0.8 * parameter_count(teacher) and layer_map.fresh == []
    # a decoder stage keeps its first layers and its last (which reads the stage's input skip)
    assert layer_map.teacher_of["up_blocks.1.resnets.1"] == "up_blocks.1.resnets.2"
    assert layer_map.teacher_of["up_blocks.1.resnets.0"] == "up_blocks.1.resnets.0"
    # stage 2 keeps one decoder layer; the last teacher layer reads another skip width, so index 0 stands in
    assert layer_map.teacher_of["up_blocks.0.resnets.0"] in ("up_blocks.0.resnets.2", "up_blocks.0.resnets.0")
    s, t = student.state_dict(), teacher.state_dict()
    for layer, partner in layer_map.teacher_of.items():
        for name in (k for k in s if k.startswith(layer + ".")):
            assert torch.equal(s[name], t[partner + name[len(layer):]]), name
    assert run(student).shape == run(teacher).shape


def test_shallower_transformers_keep_their_first_blocks():
    teacher = three_stage_unet(layers_per_block=1, transformer_layers_per_block=[1, 3, 3])
    student, layer_map = compressed_unet(teacher, StudentArchitecture(max_transformer_depth=1))
    blocks = [k for k in layer_map.teacher_of if k.endswith("transformer_blocks.0")]
    assert blocks and all(layer_map.teacher_of[k] == k for k in blocks)
    assert all(len(a.transformer_blocks) == 1 for b in student.up_blocks for a in getattr(b, "attentions", []))


@pytest.mark.parametrize("site, module", [("self_attention", "attn1"), ("cross_attention", "attn2"),
                                          ("block", None)])
def test_feature_sites_pair_same_shaped_outputs_and_match_exactly_for_a_copy(site, module):
    teacher = three_stage_unet(layers_per_block=2)
    student, layer_map = compressed_unet(teacher, StudentArchitecture(layers_per_block=[1, 1, 0],
                                                                      remove_mid_block=True))
    pairs = feature_sites(student, teacher, layer_map, site)
    assert pairs and all(p.student.endswith(module) for p in pairs if module)
    if site == "block":
        assert [p.student for p in pairs] == [f"down_blocks.{i}" for i in range(3)] + [f"up_blocks.{i}" for i in
                                                                                        range(3)]
    s_tap, t_tap = FeatureTap(student, [p.student for p in pairs]), FeatureTap(teacher, [p.teacher for p in pairs])
    with s_tap.reading() as s_features:
        run(student)
    with t_tap.reading() as t_features:
        run(teacher)
    assert all(s_features[p.student].shape == t_features[p.teacher].shape for p in pairs)
    assert feature_loss(s_features, t_features, pairs) > 0
    copy, copy_map = compressed_unet(teacher, StudentArchitecture())
    same = feature_sites(copy, teacher, copy_map, site)
    with FeatureTap(copy, [p.student for p in same]).reading() as c_features:
        run(copy)
    with FeatureTap(teacher, [p.teacher for p in same]).reading() as t_features:
        run(teacher)
    assert feature_loss(c_features, t_features, same) == 0
    assert len(dict(student.named_modules())) and not student._forward_hooks  # hooks removed on exit


def test_no_feature_site_reads_nothing():
    teacher = three_stage_unet()
    student, layer_map = compressed_unet(teacher, StudentArchitecture(remove_mid_block=True))
    assert feature_sites(student, teacher, layer_map, "none") == [] and feature_loss({}, {}, []) is None


def koala_batch(n=3, seed=0):
    from gendistill.diffusion.denoiser import TextCondition
    from gendistill.distill.models import DistillBatch

    g = torch.Generator().manual_seed(seed)
    cond = TextCondition(torch.randn(n, 5, 16, generator=g))
    return DistillBatch(["p"] * n, cond, TextCondition(torch.zeros(n, 5, 16)), torch.randn(n, 4, 8, 8, generator=g))


def test_a_student_equal_to_its_teacher_has_zero_distillation_terms_and_the_plain_task_loss():
    from gendistill.diffusion.losses import denoising_loss
    from gendistill.distill.koala import KoalaConfig, KoalaRecipe
    from tiny_pipelines import unet_model

    model = unet_model(three_stage_unet(layers_per_block=1), "v_prediction")
    recipe = KoalaRecipe(model, KoalaConfig(architecture=StudentArchitecture(), uncond_prob=0.0))
    loss = recipe.loss(koala_batch(), "student", 0, torch.Generator().manual_seed(3))
    assert loss.terms["out_kd"] == 0 and loss.terms["feat_kd"] == 0
    g = torch.Generator().manual_seed(3)  # the same draws as the recipe: timesteps, noise, dropout
    batch = koala_batch()
    t = torch.randint(0, len(model.train_sigmas), (3,), generator=g)
    eps = torch.randn(batch.latents.shape, generator=g)
    expected = denoising_loss(model.denoiser(network=recipe.models.student_unet), batch.latents,
                              model.train_sigmas[t].float(), eps, batch.cond, "min_snr")
    assert loss.terms["task"] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("site", ["self_attention", "block", "none"])
def test_the_loss_trains_only_the_compressed_student(site):
    from gendistill.distill.koala import KoalaConfig, KoalaRecipe
    from tiny_pipelines import unet_model

    model = unet_model(three_stage_unet(layers_per_block=2), "epsilon")
    config = KoalaConfig(architecture=StudentArchitecture([1, 1, 0], remove_mid_block=True), feature_site=site)
    recipe = KoalaRecipe(model, config)
    loss = recipe.loss(koala_batch(), "student", 0, torch.Generator().manual_seed(0))
    assert ("feat_kd" in loss.terms) == (site != "none") and loss.terms["out_kd"] > 0
    loss.total.backward()
    assert all(p.grad is None for p in recipe.models.teacher_unet.parameters())
    trained = [p for p in recipe.phases()[0].parameters if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(trained) > 0.9 * len(recipe.phases()[0].parameters)


def test_dmd2_gan_features_of_a_unet_without_mid_block_come_from_its_last_down_block():
    """A compressed student can be a DMD2 teacher with the GAN term (compress, then step-distil)."""
    from gendistill.distill.dmd_gan import bottleneck_channels, bottleneck_features

    student, _ = compressed_unet(three_stage_unet(), StudentArchitecture(remove_mid_block=True))
    features = bottleneck_features(student, lambda: run(student))
    assert features.shape == (2, bottleneck_channels(student), 2, 2) and not student.down_blocks[-1]._forward_hooks
