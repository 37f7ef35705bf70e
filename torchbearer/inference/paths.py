"""Where the maps of a prediction go: the probability map, the class map and each member's map beside it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchbearer.inference.ensemble import PredictOptions
    from torchbearer.inference.members import Member


def member_map_path(output: Path, name: str) -> Path:
    """Where member ``name``'s own map goes next to ``output``."""
    return output.with_name(f"{output.stem}.{name}{output.suffix}")


def class_map_path(output: Path) -> Path:
    """Where the class map goes next to ``output``."""
    return output.with_name(f"{output.stem}.classes{output.suffix}")


def map_paths(output: Path, members: Sequence[Member], options: PredictOptions) -> dict[str, Path]:
    """The maps to write: ``probability``, optionally ``classes`` and ``member:<name>`` in the members' order."""
    paths = {"probability": output}
    if options.class_map:
        paths["classes"] = class_map_path(output)
    if options.member_maps:
        paths.update({f"member:{m.name}": member_map_path(output, m.name) for m in members})
    return paths
