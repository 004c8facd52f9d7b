"""The example pictures the shipped workflows load (workflows/input/*.png) placed in the host's input folder.

A workflow dragged from workflows/ names `controlnet_core_example.png` in its Load Image node; the host only lists
files of its input folder, so the pack copies its pictures there when the host loads it (never overwriting a
user's file of the same name).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import folder_paths

log = logging.getLogger(__name__)
EXAMPLE_INPUTS = Path(__file__).resolve().parents[2] / "workflows" / "input"


def install_example_inputs(source: Path = EXAMPLE_INPUTS) -> list[Path]:
    """Copy workflows/input/*.png into the host's input folder where absent; returns the files copied."""
    target = Path(folder_paths.get_input_directory())
    copied = []
    for picture in sorted(source.glob("*.png")):
        destination = target / picture.name
        if destination.exists():
            continue
        try:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(picture, destination)
            copied.append(destination)
        except OSError as exc:  # a read-only input folder must not stop the pack from loading
            log.warning("could not copy the example picture %s to %s (%s); the example workflows need it there",
                        picture.name, target, exc)
    return copied
