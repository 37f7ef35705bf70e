"""Scenes in memory for training, the spatial split and the input statistics (numpy and rasterio only).

Each scene's stack (``imagery/cache.py`` format) is read into memory once, as uint16 DN, with its target on the
same grid (``ml/labels.py``). The split is spatial: the scene is cut into square blocks of ``block_size``
pixels and the blocks that hold labels are dealt to train / validation / test with the seed, or validation and
test are given regions (vector files) and training takes the rest. Training patches lie wholly in training
pixels; validation and test use a grid of non-overlapping patches lying wholly in theirs, so no validation
pixel is ever seen in training. Patches without a labelled pixel (all no data, say)
are never used. Nothing here imports torch: a job checks its inputs before paying for it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchbearer.imagery.cache import StackInfo, band_indexes, stack_info
from torchbearer.ml.labels import IGNORE, mask_files, scene_target

log = logging.getLogger(__name__)

#: Pixels sampled per band for the normalisation statistics (a regular subsample of the training blocks).
STATS_SAMPLES = 2_000_000
#: Sane range of a band's mean reflectance. Far above: DN were not scaled; far below: scaled twice.
MEAN_REFLECTANCE_RANGE = (0.002, 2.0)
#: Smallest standard deviation of a band's reflectance over the training pixels that still carries a signal:
#: imagery rescaled twice (and rounded back to integers) varies far less, whatever its mean.
MIN_REFLECTANCE_STD = 1e-3


class DataError(ValueError):
    """The scenes and masks cannot make a training set (says which file and what to change)."""


class InputCheckError(DataError):
    """Inputs that look wrong (double-scaled, raw DN, empty, constant): training on them would learn nothing."""


@dataclass
class Scene:
    """One scene in memory: DN (bands × rows × columns, uint16), target (rows × columns, uint8), where the
    scene has no data (rows × columns, bool: DN 0 in some band) and the reflectance terms of its stack."""

    info: StackInfo
    dn: np.ndarray
    target: np.ndarray
    nodata: np.ndarray


@dataclass(frozen=True)
class SplitOptions:
    """Spatial split: ``block_size`` pixels a block, fractions of the labelled blocks for val and test; or
    given regions (vector files in any CRS): validation / test inside them, training outside."""

    block_size: int
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    val_regions: Path | None = None
    test_regions: Path | None = None


#: Part of a pixel in :attr:`Split.parts`.
UNUSED, TRAIN, VAL, TEST = 0, 1, 2, 3


@dataclass
class Split:
    """Patch origins (scene, row, column), in pixels, of each part of the split, and per scene the part of
    every pixel (rows × columns: ``UNUSED``, ``TRAIN``, ``VAL`` or ``TEST``)."""

    parts: list[np.ndarray]
    train: list[tuple[int, int, int]] = field(default_factory=list)
    val: list[tuple[int, int, int]] = field(default_factory=list)
    test: list[tuple[int, int, int]] = field(default_factory=list)


def load_scene(stack: Path, bands: list[str] | None, masks: list[Path], classes: list[str],
               class_field: str | None = None, resolution: int | None = None) -> Scene:  # fmt: skip
    """Read a stack's bands and build its target (no-data pixels of the scene are ignored)."""
    import rasterio

    info = stack_info(stack, resolution)
    indexes = band_indexes(info, bands) if bands is not None else None
    with rasterio.open(stack) as ds:
        dn = ds.read(indexes)
    if bands is not None:
        info = StackInfo(**{**info.__dict__, "bands": tuple(bands)})
    target = scene_target(info, masks, classes, class_field)
    nodata = (dn == 0).any(axis=0)
    target[nodata] = IGNORE
    if (target == IGNORE).all():
        raise DataError(f"scene {stack.name}: its masks label only no-data pixels")
    return Scene(info, dn, target, nodata)


# -- the spatial split -----------------------------------------------------------------------------------------


def _cell_counts(mask: np.ndarray, cell: int, fill: bool = False) -> np.ndarray:
    """Per cell of ``cell`` pixels, how many pixels of ``mask`` are set; the edge is padded with ``fill``."""
    rows, cols = -(-mask.shape[0] // cell), -(-mask.shape[1] // cell)
    padded = np.pad(mask, ((0, rows * cell - mask.shape[0]), (0, cols * cell - mask.shape[1])), constant_values=fill)
    return padded.reshape(rows, cell, cols, cell).sum(axis=(1, 3))


def _window_sums(cells: np.ndarray, k: int) -> np.ndarray:
    """Sum over every k × k window of cells (an integral image), indexed by the window's first cell."""
    integral = np.pad(cells.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]


def _block_parts(scenes: list[Scene], options: SplitOptions, seed: int) -> list[np.ndarray]:
    """Deal the blocks that hold labels to train / val / test with ``seed``; per-pixel parts."""
    block = options.block_size
    labelled_blocks = []
    for index, scene in enumerate(scenes):
        counts = _cell_counts(scene.target != IGNORE, block)
        labelled_blocks += [(index, r, c) for r, c in zip(*np.nonzero(counts), strict=True)]
    n = len(labelled_blocks)
    n_val = max(1, round(options.val_fraction * n)) if options.val_fraction > 0 else 0
    n_test = max(1, round(options.test_fraction * n)) if options.test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise DataError(
            f"{n} labelled blocks of {block} px cannot be split {n - n_val - n_test}/{n_val}/{n_test} "
            "(train/val/test): lower block_size or the fractions"
        )
    blocks = [np.zeros((-(-s.target.shape[0] // block), -(-s.target.shape[1] // block)), np.uint8) for s in scenes]
    for rank, i in enumerate(np.random.default_rng(seed).permutation(n)):
        scene, r, c = labelled_blocks[i]
        blocks[scene][r, c] = VAL if rank < n_val else TEST if rank < n_val + n_test else TRAIN
    ones = np.ones((block, block), np.uint8)
    return [np.kron(b, ones)[: s.target.shape[0], : s.target.shape[1]] for b, s in zip(blocks, scenes, strict=True)]


def _region_parts(scenes: list[Scene], options: SplitOptions) -> list[np.ndarray]:
    """Validation inside ``val_regions``, test inside ``test_regions``, training elsewhere."""
    from torchbearer.ml.labels import rasterize_labels

    parts = []
    for scene in scenes:
        part = np.full(scene.target.shape, TRAIN, np.uint8)
        for path, value in ((options.val_regions, VAL), (options.test_regions, TEST)):
            if path is not None:
                part[rasterize_labels(Path(path), scene.info, ["outside", "inside"]) == 1] = value
        parts.append(part)
    return parts


def make_split(scenes: list[Scene], patch_size: int, options: SplitOptions, seed: int) -> Split:
    """Split the scenes (blocks, or given regions) and list the patches each part may use.

    Raises:
        DataError: too few labelled blocks, or a part without a single patch.
    """
    by_regions = options.val_regions is not None
    split = Split(parts=_region_parts(scenes, options) if by_regions else _block_parts(scenes, options, seed))
    cell = math.gcd(patch_size // 8 or 1, patch_size if by_regions else options.block_size)  # origins' grid
    k = patch_size // cell
    for index, scene in enumerate(scenes):
        labelled = _window_sums(_cell_counts(scene.target != IGNORE, cell), k)
        for part, name in ((TRAIN, "train"), (VAL, "val"), (TEST, "test")):
            # Windows reaching past the scene's edge count as outside (padding with True).
            outside = _window_sums(_cell_counts(split.parts[index] != part, cell, fill=True), k)
            rows, cols = np.nonzero((outside == 0) & (labelled > 0))
            origins = [(index, int(r) * cell, int(c) * cell) for r, c in zip(rows, cols, strict=True)]
            if name != "train":
                origins = _non_overlapping(origins, patch_size)
            getattr(split, name).extend(origins)
    wanted_test = options.test_fraction > 0 if not by_regions else options.test_regions is not None
    where = "regions" if by_regions else f"blocks of {options.block_size} px"
    for name, wanted in (("train", True), ("val", True), ("test", wanted_test)):
        if wanted and not getattr(split, name):
            raise DataError(
                f"no {name} patch of {patch_size} px fits wholly in the {name} {where} with a label: "
                f"lower patch_size or {'widen the regions' if by_regions else 'raise block_size'}"
            )
    return split


def _non_overlapping(origins: list[tuple[int, int, int]], size: int) -> list[tuple[int, int, int]]:
    """Origins kept in raster order so that no two windows overlap (a grid where the blocks allow)."""
    kept: list[tuple[int, int, int]] = []
    taken: dict[int, list[tuple[int, int]]] = {}
    for scene, r, c in sorted(origins):
        if all(abs(r - r2) >= size or abs(c - c2) >= size for r2, c2 in taken.get(scene, [])):
            kept.append((scene, r, c))
            taken.setdefault(scene, []).append((r, c))
    return kept


# -- statistics and the input check ----------------------------------------------------------------------------


def band_stats(scenes: list[Scene], split: Split) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of reflectance over valid pixels of the training blocks."""
    total = sum(s.target.size for s in scenes)
    stride = max(1, int(math.sqrt(total / STATS_SAMPLES)))
    samples = []
    for index, scene in enumerate(scenes):
        part = split.parts[index][::stride, ::stride]
        dn = scene.dn[:, ::stride, ::stride]
        keep = (part == TRAIN) & (dn != 0).all(axis=0)
        scale, shift = scene.info.reflectance_terms
        samples.append(dn[:, keep].astype(np.float64) * scale + shift)
    values = np.concatenate(samples, axis=1)
    if values.shape[1] == 0:
        raise InputCheckError("the training blocks hold no valid pixel: every pixel is no data (DN 0)")
    return values.mean(axis=1).tolist(), values.std(axis=1).tolist()


def check_inputs(bands: list[str], mean: list[float], std: list[float]) -> None:
    """Fail loudly on inputs that look double-scaled, unscaled, empty or constant.

    The classic silent failure: reflectance divided by 10 000 twice gives bands that are all ~1e-5, the
    network sees a blank image, and the masks it learns are blank.
    """
    low, high = MEAN_REFLECTANCE_RANGE
    problems = []
    for band, m, s in zip(bands, mean, std, strict=True):
        if m > high:
            problems.append(f"{band} mean reflectance {m:.4g} > {high}: DN not scaled (BOA_ADD_OFFSET/10000?)")
        elif abs(m) < low and s < low:
            problems.append(f"{band} mean reflectance {m:.3g}, std {s:.3g}: double-scaled or empty input")
        elif s == 0:
            problems.append(f"{band} is constant ({m:.4g}) over the training pixels")
        elif s < MIN_REFLECTANCE_STD:
            problems.append(
                f"{band} varies by a std of {s:.2g} reflectance only: normalised, the input has almost no "
                "variance (rescaled twice?)"
            )
    if len(problems) > len(bands) // 2 or any("constant" in p for p in problems):
        raise InputCheckError("inputs look wrong: " + "; ".join(problems))
    for problem in problems:
        log.warning("input check: %s", problem)


def train_class_counts(scenes: list[Scene], split: Split) -> np.ndarray:
    """Pixels of each class value (0 … 254) in the training part of the split (ignored pixels left out)."""
    counts = np.zeros(IGNORE, np.int64)
    for index, scene in enumerate(scenes):
        values = scene.target[(split.parts[index] == TRAIN) & (scene.target != IGNORE)]
        counts += np.bincount(values, minlength=IGNORE)[:IGNORE]
    return counts


def check_classes(counts: np.ndarray, classes: list[str] | None = None) -> None:
    """Refuse training masks that hold a single class: the model would learn to draw it everywhere.

    The classic cause: masks made from imagery that was rescaled twice come out blank (all background).
    ``counts`` holds the labelled training pixels per class value; ``classes`` names them in the message.

    Raises:
        InputCheckError: fewer than two classes have a pixel in the training split.
    """
    present = np.nonzero(counts)[0]
    if len(present) >= 2:
        return

    def name(value: int) -> str:
        return f"{classes[value]!r} ({value})" if classes and value < len(classes) else str(value)

    if len(present) == 0:
        raise InputCheckError("the training split holds no labelled pixel (every mask pixel is 255, no label)")
    raise InputCheckError(
        f"the training masks hold a single class: {name(int(present[0]))} in all {int(counts.sum())} labelled "
        "pixels; blank masks (made from imagery rescaled twice?) or the wrong mask files: nothing to learn"
    )


def load_scenes(
    stacks: list[Path],
    masks: list[Path],
    classes: list[str],
    *,
    bands: list[str] | None = None,
    class_field: str | None = None,
    resolution: int | None = None,
) -> list[Scene]:
    """Every stack in memory with its target; ``masks`` may name files or folders of them.

    Raises:
        DataError: no stack, or stacks at different resolutions (and the errors of :func:`load_scene`).
    """
    if not stacks:
        raise DataError("no scene to train on")
    files = [m for path in masks for m in mask_files(Path(path))]
    scenes: list[Scene] = []
    for stack in stacks:
        scene = load_scene(Path(stack), bands, files, classes, class_field, resolution)
        bands = bands or list(scene.info.bands)
        if scenes and scene.info.resolution != scenes[0].info.resolution:
            raise DataError(
                f"scene {scene.info.path.name} is at {scene.info.resolution:g} m, {scenes[0].info.path.name} at "
                f"{scenes[0].info.resolution:g} m: train on one resolution"
            )
        scenes.append(scene)
    return scenes
