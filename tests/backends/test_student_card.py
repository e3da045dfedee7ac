"""gendistill.json is read and written through StudentCard only."""

import json

from gendistill.backends.student_card import FILE_NAME, StudentCard
from gendistill.shipped import shipped_models_dir


def test_round_trip_writes_only_set_fields(tmp_path):
    card = StudentCard(recipe="dmd2", steps=1, max_steps=1, guidance=0.0, teacher="shapes-teacher",
                       train_seconds=12.5, device="cpu", threads=2, written="2026-01-01 00:00:00")
    card.write(tmp_path)
    assert StudentCard.read(tmp_path) == card
    StudentCard(guidance=2.0).write(tmp_path)
    assert json.loads((tmp_path / FILE_NAME).read_text()) == {"guidance": 2.0}
    teacher = StudentCard.read(tmp_path)
    assert teacher.guidance == 2.0 and not teacher.is_student and teacher.steps is None


def test_missing_broken_or_odd_cards(tmp_path):
    assert StudentCard.read(tmp_path) is None
    (tmp_path / FILE_NAME).write_text("{not json")
    assert StudentCard.read(tmp_path) is None
    (tmp_path / FILE_NAME).write_text("[1, 2]")
    assert StudentCard.read(tmp_path) is None
    (tmp_path / FILE_NAME).write_text(json.dumps({"recipe": "lcm", "steps": 4.0, "max_steps": "50", "guidance": 2,
                                                  "threads": True, "future_key": 1}))
    card = StudentCard.read(tmp_path)
    assert card == StudentCard(recipe="lcm", steps=4, guidance=2.0)  # wrong types dropped, unknown keys ignored
    assert isinstance(card.steps, int) and isinstance(card.guidance, float) and card.is_student


def test_every_shipped_model_card_reads():
    cards = {p.name: StudentCard.read(p) for p in shipped_models_dir().iterdir() if (p / FILE_NAME).is_file()}
    assert cards["shapes-teacher"].guidance == 2.0 and not cards["shapes-teacher"].is_student
    assert cards["shapes-dmd2-1step"].recipe == "dmd2" and cards["shapes-dmd2-1step"].steps == 1
    assert cards["shapes-lcm-4step"].max_steps == 50
