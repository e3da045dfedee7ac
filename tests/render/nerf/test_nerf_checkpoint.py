"""Field checkpoints: safetensors with the config in the metadata; exact round trip; bad files are UserErrors."""

import pytest
import torch

pytest.importorskip("nerfstudio")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from gendistill.errors import UserError  # noqa: E402
from gendistill.render.nerf import ARCHITECTURES, FieldConfig, build_field, load_field, read_field_config, save_field  # noqa: E402,E501

pytestmark = pytest.mark.nerf


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_round_trip_is_exact(tmp_path, architecture):
    config = FieldConfig(architecture=architecture, bound=1.25, hidden_width=16)
    field = build_field(config, seed=3)
    path = save_field(field, tmp_path / "f" / "field.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "gendistill-radiance-field"
    loaded = load_field(path)
    assert loaded.config == config and read_field_config(path) == config
    x = torch.rand(50, 3) * 2 - 1
    assert all(torch.equal(a, b) for a, b in zip(field(x), loaded(x)))
    assert field.state_dict().keys() == loaded.state_dict().keys()


def test_not_a_checkpoint_is_one_line_user_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_text("hello")
    with pytest.raises(UserError, match="is not a safetensors file") as err:
        load_field(junk)
    assert "\n" not in str(err.value)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(UserError, match="not a gendistill radiance field checkpoint"):
        load_field(other)
    with pytest.raises(UserError, match="no radiance field checkpoint at"):
        load_field(tmp_path / "missing.safetensors")
