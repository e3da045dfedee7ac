"""The one place a job's ``--out`` folder is checked and made: a bad path is one UserError line, not a traceback."""

from __future__ import annotations

from pathlib import Path

from gendistill.errors import UserError


def check_out_dir(path: str | Path) -> Path:
    """``path`` as a Path if it can be (or already is) a folder; creates nothing. A UserError when it, or a
    folder above it, is an existing file: "--out README.md is a file; give a folder"."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; give a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {path}: {parent} is a file, so no folder can be made inside it")
            break
    return path


def prepare_out_dir(path: str | Path) -> Path:
    """``check_out_dir``, then make the folder (and its parents); an OS refusal (permissions, read-only
    disk) is a UserError too."""
    path = check_out_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {path}: cannot make the folder ({err.strerror or err})") from None
    return path
