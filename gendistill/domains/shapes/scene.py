"""What a shapes-world scene is: one primitive in one colour, centred at the origin (DESIGN.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

from gendistill.errors import check_choice

SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus")
"""The primitives, in class-index order."""

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.08, 0.08),
    "orange": (1.00, 0.50, 0.00),
    "yellow": (0.96, 0.86, 0.08),
    "green": (0.12, 0.68, 0.18),
    "cyan": (0.05, 0.80, 0.86),
    "blue": (0.12, 0.24, 0.92),
    "purple": (0.52, 0.12, 0.78),
    "pink": (1.00, 0.42, 0.74),
}
"""Albedo (linear RGB in [0, 1]) of each colour, in class-index order. Hues are about 30-60 degrees apart
and saturated, so they stay apart under Lambertian shading (which scales brightness, not hue)."""

_COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)


@dataclass(frozen=True)
class Scene:
    """One primitive of one colour at the origin; raises a UserError for an unknown shape or colour."""

    shape: str
    """One of SHAPES."""
    colour: str
    """One of the keys of COLOURS."""

    def __post_init__(self) -> None:
        check_choice("shape", self.shape, SHAPES)
        check_choice("colour", self.colour, _COLOUR_NAMES)

    @property
    def albedo(self) -> tuple[float, float, float]:
        """The RGB albedo of the colour."""
        return COLOURS[self.colour]


def all_scenes() -> list[Scene]:
    """Every (shape, colour) combination: 5 shapes x 8 colours = 40 scenes, shape-major."""
    return [Scene(shape, colour) for shape in SHAPES for colour in _COLOUR_NAMES]


def shape_index(shape: str) -> int:
    """Class index of a shape name (its position in SHAPES)."""
    return SHAPES.index(check_choice("shape", shape, SHAPES))


def colour_index(colour: str) -> int:
    """Class index of a colour name (its position in COLOURS)."""
    return _COLOUR_NAMES.index(check_choice("colour", colour, _COLOUR_NAMES))


def scene_from_indices(shape_id: int, colour_id: int) -> Scene:
    """The scene with the given class indices (inverse of shape_index / colour_index)."""
    return Scene(SHAPES[shape_id], _COLOUR_NAMES[colour_id])
