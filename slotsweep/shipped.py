"""The files slotsweep ships: named sweeps, the configs they build on, the report template.

They live at the top of the checkout (`sweeps/`, `configs/`) and are installed as the
packages `slotsweep.sweeps` and `slotsweep.configs` (pyproject.toml's package-dir), so one
lookup through importlib.resources finds them in an editable install (the checkout) and in
a wheel's (site-packages) alike."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped(folder: str) -> Path:
    """The folder of shipped `sweeps` or `configs` in this installation.

    pip installs packages unpacked, so the resource root is a folder on disk; a Path lets
    sweep files name their base config relative to themselves (`../configs/x.yaml`)."""
    return Path(str(files(f"slotsweep.{folder}")))


def sweep_folders() -> tuple[Path, Path]:
    """Where a sweep's name is looked up: ./sweeps first, then the package's."""
    return Path.cwd() / "sweeps", shipped("sweeps")


def known_sweeps() -> list[str]:
    """The sweep names that `slotsweep run NAME` finds."""
    return sorted({p.stem for folder in sweep_folders() for p in folder.glob("*.yaml")})
