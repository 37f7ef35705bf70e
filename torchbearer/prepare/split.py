"""The ``split`` step: a chip folder's chips into train / val (/ test) by spatial blocks.

Neighbouring chips see nearly the same ground (and share pixels when they overlap), so a random split by chip
leaks the validation set into training. Here the scene is cut into square blocks (``block`` pixels, anchored at
its upper-left corner); blocks, not chips, are shuffled (``seed``) and dealt to the splits by ``fractions``.
A chip keeps its split only if every block it touches belongs to that split: chips straddling two splits are
dropped. So the pixels of different splits never meet, and the step then checks it chip pair by chip pair and
records the result (``overlapping_pairs``, 0) in the manifest and its report.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchbearer.prepare import PrepareError
from torchbearer.prepare.chip import SPLITS, Chip, ChipManifest, chip_path, read_index, write_index
from torchbearer.prepare.rasters import Report, no_report


@dataclass(frozen=True)
class SplitReport:
    """What the split did: chips per split, chips dropped at split borders, and the overlap check."""

    chips: dict[str, int]
    blocks: dict[str, int]
    dropped: int
    overlapping_pairs: int

    def describe(self) -> str:
        counts = ", ".join(f"{split} {n}" for split, n in self.chips.items())
        check = "no chip overlaps a chip of another split" if self.overlapping_pairs == 0 else (
            f"{self.overlapping_pairs} pairs of chips of different splits overlap")  # fmt: skip
        return f"{counts} chips; {self.dropped} dropped at split borders; check: {check}"


def assign_blocks(blocks: list[tuple[int, int]], fractions: dict[str, float], seed: int) -> dict[tuple[int, int], str]:
    """Deal shuffled blocks to the splits: ``round(fraction × blocks)`` each (at least one when asked for),
    the rest to train."""
    if not blocks:
        return {}
    asked = [s for s in ("val", "test") if fractions.get(s, 0) > 0]
    if len(blocks) < len(asked) + 1:
        raise PrepareError(
            f"{len(blocks)} block(s) cannot make train + {' + '.join(asked)}: use a smaller block (pixels)"
        )
    order = np.random.default_rng(seed).permutation(len(blocks))
    counts = {s: max(1, round(fractions[s] * len(blocks))) for s in asked}
    if sum(counts.values()) >= len(blocks):
        raise PrepareError(f"fractions {fractions} leave no block of {len(blocks)} for train")
    assigned: dict[tuple[int, int], str] = {}
    position = 0
    for split in asked:
        for i in order[position : position + counts[split]]:
            assigned[blocks[i]] = split
        position += counts[split]
    for i in order[position:]:
        assigned[blocks[i]] = "train"
    return assigned


def _touched(chip: Chip, size: int, block: int) -> list[tuple[int, int]]:
    rows = range(chip.row // block, (chip.row + size - 1) // block + 1)
    cols = range(chip.col // block, (chip.col + size - 1) // block + 1)
    return [(r, c) for r in rows for c in cols]


def overlapping_pairs(chips: list[Chip], size: int) -> int:
    """Pairs of chips of different splits whose pixels overlap (an area, not just an edge)."""
    import shapely

    if not chips:
        return 0
    boxes = [shapely.box(c.col, c.row, c.col + size, c.row + size) for c in chips]
    tree = shapely.STRtree(boxes)
    left, right = tree.query(boxes, predicate="intersects")
    pairs = 0
    for i, j in zip(left, right, strict=True):
        if i < j and chips[i].split != chips[j].split and boxes[i].intersection(boxes[j]).area > 0:
            pairs += 1
    return pairs


def split_chips(
    folder: Path, *, fractions: dict[str, float], block: int, seed: int = 0, report: Report = no_report
) -> SplitReport:
    """Split the chips of ``folder`` (renaming them ``<split>_<i>`` in their split's folders) and check it."""
    unknown = set(fractions) - {"val", "test"}
    if unknown or any(not 0 <= f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise PrepareError(f"fractions {fractions}: give val (and test) in [0, 1) adding up to less than 1")
    manifest = ChipManifest.read(folder)
    if block < 1:
        raise PrepareError(f"block {block} must be a positive number of pixels")
    chips = read_index(folder)
    size = manifest.size
    touched = {chip.name: _touched(chip, size, block) for chip in chips}
    assigned = assign_blocks(sorted({b for blocks in touched.values() for b in blocks}), fractions, seed)
    kept: list[tuple[Chip, str]] = []
    dropped: list[Chip] = []
    for chip in chips:
        splits = {assigned[b] for b in touched[chip.name]}
        (kept.append((chip, splits.pop())) if len(splits) == 1 else dropped.append(chip))
    renamed = _move(folder, manifest, kept, dropped, report)
    pairs = overlapping_pairs(renamed, size)
    result = SplitReport(
        chips={s: sum(c.split == s for c in renamed) for s in SPLITS if any(c.split == s for c in renamed)},
        blocks={s: sum(v == s for v in assigned.values()) for s in SPLITS if s in assigned.values()},
        dropped=len(dropped),
        overlapping_pairs=pairs,
    )
    empty = [s for s in ("train", *fractions) if s not in result.chips]
    if empty:
        raise PrepareError(
            f"{folder}: split {', '.join(empty)} got no chip ({result.describe()}): use a smaller block "
            f"than {block} pixels or other fractions (the chips are left as split above)"
        )
    if pairs:  # cannot happen by construction; refuse to leave a leaking split behind
        raise PrepareError(f"{folder}: split check failed: {result.describe()}")
    manifest.splits = result.chips
    manifest.split = {"fractions": fractions, "block": block, "seed": seed, "blocks": result.blocks,
                      "dropped": result.dropped, "overlapping_pairs": pairs}  # fmt: skip
    write_index(folder, renamed, manifest)
    manifest.write(folder)
    return result


def _move(
    folder: Path, manifest: ChipManifest, kept: list[tuple[Chip, str]], dropped: list[Chip], report: Report
) -> list[Chip]:
    """Move chip files to their split's folders under new names (through a staging folder: old and new names
    overlap); delete the dropped ones. Returns the chips with their new names."""
    whats = ["frames", "masks"] if manifest.mask else ["frames"]
    staging = folder / ".split-staging"
    shutil.rmtree(staging, ignore_errors=True)
    for what in whats:
        (staging / what).mkdir(parents=True)
    for chip in dropped:
        for what in whats:
            chip_path(folder, chip.split, chip.name, what).unlink()
    for chip, _ in kept:
        for what in whats:
            chip_path(folder, chip.split, chip.name, what).rename(staging / what / f"{chip.split}-{chip.name}.tif")
    for split in SPLITS:
        for what in ("frames", "masks"):
            shutil.rmtree(folder / f"{split}_{what}", ignore_errors=True)
    numbers = dict.fromkeys(SPLITS, 0)
    renamed = []
    for done, (chip, split) in enumerate(sorted(kept, key=lambda k: (k[0].row, k[0].col)), 1):
        name = f"{split}_{numbers[split]}"
        numbers[split] += 1
        for what in whats:
            target = chip_path(folder, split, name, what)
            target.parent.mkdir(exist_ok=True)
            (staging / what / f"{chip.split}-{chip.name}.tif").rename(target)
        renamed.append(Chip(name, split, chip.row, chip.col, chip.valid_share, chip.positive_share))
        report("splitting", done=done, total=len(kept), unit="chips", step="split")
    shutil.rmtree(staging)
    return renamed
