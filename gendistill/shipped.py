"""Where the shipped models and presets live, and how short names find them.

The models (the shapes teacher, its students, the classifier) live in ``gendistill/assets/<name>`` and the
presets in ``gendistill/configs/``; both are package data, so they are found from any folder, in a checkout
(where the top-level ``assets/`` and ``configs/`` are symlinks to them) as in an installed wheel.

A model may be named by a path (as always), by its short name (``shapes-dmd2-1step``), by the legacy path
``assets/<name>`` from any folder, or by a hub id (returned unchanged). A preset may be named by a path, by its
path under ``configs/`` (``configs/distill/shapes-lcm.yaml`` or ``distill/shapes-lcm.yaml``) or by its stem
(``shapes-lcm``). A path that exists relative to the working folder always wins over a shipped one.
"""

from __future__ import annotations

from pathlib import Path

from gendistill.errors import UserError

_PACKAGE = Path(__file__).resolve().parent
_LEGACY_MODEL_PREFIX = "assets/"
_LEGACY_PRESET_PREFIX = "configs/"


def shipped_models_dir() -> Path:
    """The folder of the shipped models (``gendistill/assets``)."""
    return _PACKAGE / "assets"


def shipped_configs_dir() -> Path:
    """The folder of the shipped presets (``gendistill/configs``)."""
    return _PACKAGE / "configs"


def list_shipped_models() -> list[str]:
    """Short names of the shipped diffusers pipelines (folders with ``model_index.json``), sorted."""
    root = shipped_models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())


def shipped_model(name: str) -> Path | None:
    """The shipped folder called ``name`` (``shapes-teacher``, ``assets/shapes-teacher`` or
    ``shapes-classifier``), or None if there is none."""
    name = name.strip().rstrip("/")
    if name.startswith(_LEGACY_MODEL_PREFIX):
        name = name[len(_LEGACY_MODEL_PREFIX):]
    if not name or "/" in name or name in (".", ".."):
        return None
    folder = shipped_models_dir() / name
    return folder if folder.is_dir() else None


def resolve_model_name(name: str) -> str:
    """The folder ``name`` means: the path itself if it exists, else the shipped model of that short name
    (or legacy ``assets/<name>``), else ``name`` unchanged (a hub id, or a path the caller reports missing)."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    folder = shipped_model(name)
    return str(folder) if folder is not None else name


def is_shipped_reference(name: str) -> bool:
    """Whether ``name`` is written as a shipped model would be (``assets/<name>``), found or not."""
    return name.strip().startswith(_LEGACY_MODEL_PREFIX)


def list_shipped_presets() -> list[str]:
    """The shipped presets as paths under ``configs/`` without ``.yaml`` (``distill/shapes-lcm``), sorted."""
    root = shipped_configs_dir()
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def resolve_preset(path: str | Path, folder: str | None = None) -> Path:
    """The YAML file ``path`` means: the file itself if it exists, else the shipped preset it names.

    Shipped presets answer to ``configs/distill/shapes-lcm.yaml``, ``distill/shapes-lcm.yaml``,
    ``distill/shapes-lcm`` and ``shapes-lcm``; a bare stem prefers the preset in ``folder`` (``distill``,
    ``text-to-3d``) when several folders hold one. Raises a UserError naming the presets when none matches.
    """
    given = Path(path).expanduser()
    if given.is_file():
        return given
    found = _shipped_preset(str(path), folder)
    if found is not None:
        return found
    raise UserError(f"config file not found: {path}; give a YAML file or a shipped preset: "
                    f"{', '.join(_preset_choices(folder))}")


def _shipped_preset(text: str, folder: str | None) -> Path | None:
    root = shipped_configs_dir()
    relative = text.strip().replace("\\", "/")
    if relative.startswith(_LEGACY_PRESET_PREFIX):
        relative = relative[len(_LEGACY_PRESET_PREFIX):]
    if not relative or ".." in relative.split("/") or any(c in relative for c in "*?[]"):
        return None
    stem = relative[:-5] if relative.endswith(".yaml") else relative
    if "/" in stem:
        candidate = root / f"{stem}.yaml"
        return candidate if candidate.is_file() else None
    matches = sorted(p for p in root.rglob(f"{stem}.yaml") if p.is_file()) if root.is_dir() else []
    preferred = [p for p in matches if folder is not None and p.parent == root / folder]
    if preferred:
        return preferred[0]
    return matches[0] if len(matches) == 1 else None


def _preset_choices(folder: str | None) -> list[str]:
    presets = list_shipped_presets()
    if folder is not None:
        presets = [p for p in presets if p.rpartition("/")[0] == folder] or presets
    return presets
