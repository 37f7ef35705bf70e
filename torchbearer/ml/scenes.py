"""Scenes for training, the spatial split and the input statistics (numpy and rasterio only).

Each scene's stack (``imagery/cache.py`` format) is read through a memory-mapped raw copy (``ml/mapped.py``),
never held in process memory, with its target on the same grid (``ml/labels.py``, kept in memory or, given
a work folder, memory-mapped too). Scenes that no mask overlaps (or whose labels fall only on no data) are
reported and skipped. The split is spatial: the ground is cut into square blocks of ``block_size`` pixels
on a grid fixed in the scenes' CRS (so the same place seen at several dates, or by overlapping tiles, is one
block), and the blocks that hold labels are dealt to train / validation / test with the seed; or validation
and test are given regions (vector files) and training takes the rest. Training patches lie wholly in
training pixels; validation and test use a grid of non-overlapping patches lying wholly in theirs, so no
validation pixel is ever seen in training. Patches without a labelled pixel (all no data, say) are never
used. Nothing here imports torch: a job checks its inputs before paying for it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torchbearer.imagery.cache import StackInfo, band_indexes, stack_info
from torchbearer.ml.labels import IGNORE, NoLabels, mask_files, scene_target
from torchbearer.ml.mapped import open_mapped, release, save_mapped, window_span

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
class TrainingScene:
    """One scene loaded for training: DN (every band of the stack × rows × columns, uint16, memory-mapped),
    target (rows × columns, uint8), where the scene has no data (rows × columns, bool: DN 0 in some band of the
    stack), the stack's indexes of the bands trained on (None: all) and the reflectance terms of its stack."""

    info: StackInfo
    dn: np.ndarray
    target: np.ndarray
    nodata: np.ndarray
    band_index: list[int] | None = None

    def patch(self, row: int, col: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(DN bands × size × size, target, no data) of the window at ``row``, ``col`` (views where possible)."""
        window = (slice(row, row + size), slice(col, col + size))
        dn = self.dn[(slice(None), *window)]
        if self.band_index is not None:
            dn = dn[self.band_index]  # a copy of the patch only, never of the scene
        return dn, self.target[window], self.nodata[window]

    def window_bytes(self, size: int) -> tuple[int, int]:
        """(bytes reading a window ``size`` pixels high may map from this scene's files, bytes of all of them)."""
        arrays = (self.dn, self.target, self.nodata)
        return sum(window_span(a, size) for a in arrays), sum(a.nbytes for a in arrays)

    def release(self) -> None:
        """Drop this scene's mapped pages from the process's resident set (they stay in the page cache)."""
        release(self.dn, self.target, self.nodata)


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


class _Parts(Sequence):
    """Per scene, the part of every pixel (rows × columns uint8), made on demand (not held: a 10 m scene's
    would be 120 MB)."""

    def __init__(self, make, count: int) -> None:
        self._make, self._count = make, count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._make(i) for i in range(self._count)[index]]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return self._make(index % self._count)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self._make(i) for i in range(self._count))


def no_origins() -> np.ndarray:
    """An empty origins array (0 × 3 int64: scene, row, column)."""
    return np.zeros((0, 3), np.int64)


@dataclass
class Split:
    """Patch origins (origins × 3 int64 arrays: scene, row, column, in pixels; grouped by scene) of each part of
    the split (arrays, not lists of tuples: a few dozen 10 m scenes have millions); per scene the part of every
    pixel (``parts[i]``, rows × columns: ``UNUSED``, ``TRAIN``, ``VAL`` or ``TEST``, made on demand); per
    scene the labelled training pixels; per class the training pixels."""

    parts: Sequence[np.ndarray]
    train: np.ndarray = field(default_factory=lambda: no_origins())
    val: np.ndarray = field(default_factory=lambda: no_origins())
    test: np.ndarray = field(default_factory=lambda: no_origins())
    train_area: list[int] = field(default_factory=list)
    class_counts: list[int] = field(default_factory=list)
    #: Per training origin, which classes its patch holds (origins × classes, bool).
    train_classes: np.ndarray | None = None


def load_scene(stack: Path, bands: list[str] | None, masks: list[Path], classes: list[str],
               class_field: str | None = None, resolution: int | None = None, *,
               cache_dir: Path | None = None, work_dir: Path | None = None) -> TrainingScene:  # fmt: skip
    """Open a stack's raw copy (made once under ``cache_dir``, default ``mapped/`` beside the stack) and build
    its target (no-data pixels of the scene are ignored); given ``work_dir``, the target is memory-mapped from
    there too.

    Raises:
        NoLabels: no mask overlaps the scene, or its masks label only no-data pixels.
    """
    info = stack_info(stack, resolution)
    index = [i - 1 for i in band_indexes(info, bands)] if bands is not None else None
    dn, nodata = open_mapped(stack, cache_dir or Path(stack).parent / "mapped")
    if bands is not None:
        info = StackInfo(**{**info.__dict__, "bands": tuple(bands)})
    target = scene_target(info, masks, classes, class_field)
    target[nodata] = IGNORE
    release(nodata)
    if (target == IGNORE).all():
        raise NoLabels(f"scene {stack.name}: its masks label only no-data pixels")
    if work_dir is not None:
        target = save_mapped(target, Path(work_dir) / f"{Path(stack).stem}.{id(target):x}.target.npy")
    return TrainingScene(info, dn, target, nodata, index if index != list(range(len(info.bands))) else None)


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


def _grid_offset(info: StackInfo, block: int) -> tuple[int, int, int, int]:
    """Where the scene sits on the CRS's block grid: (first block row, first block column, pixel rows and
    columns of the scene before its first whole block). Blocks are ``block`` pixels, the grid starts at the
    CRS's origin, so every scene in one CRS and resolution shares it."""
    t, res = info.transform, info.resolution
    row0, col0 = round(-t.f / res), round(t.c / res)  # the scene's first pixel on the CRS's pixel grid
    return row0 // block, col0 // block, row0 % block, col0 % block


def _block_table(scene: TrainingScene, block: int, values: np.ndarray) -> np.ndarray:
    """Per-block sums of ``values`` (rows × columns) on the CRS block grid of the scene."""
    _, _, dr, dc = _grid_offset(scene.info, block)
    padded = np.pad(values, ((dr, 0), (dc, 0)))
    return _cell_counts(padded, block)


def _block_parts(scenes: list[TrainingScene], options: SplitOptions, seed: int):
    """Deal the blocks that hold labels to train / val / test with ``seed``, blocks keyed by CRS and place
    (one place at several dates is one block); returns a function giving a scene's per-pixel parts."""
    block = options.block_size
    keys: set[tuple[str, int, int]] = set()
    origins = []
    for scene in scenes:
        counts = _block_table(scene, block, scene.target != IGNORE)
        scene.release()
        br, bc, _, _ = _grid_offset(scene.info, block)
        crs = scene.info.crs.to_string()
        origins.append((crs, br, bc))
        keys.update((crs, br + int(r), bc + int(c)) for r, c in zip(*np.nonzero(counts), strict=True))
    ordered = sorted(keys)
    n = len(ordered)
    n_val = max(1, round(options.val_fraction * n)) if options.val_fraction > 0 else 0
    n_test = max(1, round(options.test_fraction * n)) if options.test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise DataError(
            f"{n} labelled blocks of {block} px cannot be split {n - n_val - n_test}/{n_val}/{n_test} "
            "(train/val/test): lower block_size or the fractions"
        )
    part_of: dict[tuple[str, int, int], int] = {}
    for rank, i in enumerate(np.random.default_rng(seed).permutation(n)):
        part_of[ordered[i]] = VAL if rank < n_val else TEST if rank < n_val + n_test else TRAIN

    def parts(index: int) -> np.ndarray:
        scene = scenes[index]
        crs, br, bc = origins[index]
        _, _, dr, dc = _grid_offset(scene.info, block)
        rows, cols = -(-(scene.info.height + dr) // block), -(-(scene.info.width + dc) // block)
        table = np.array([[part_of.get((crs, br + r, bc + c), UNUSED) for c in range(cols)] for r in range(rows)],
                         np.uint8).reshape(rows, cols)  # fmt: skip
        full = np.kron(table, np.ones((block, block), np.uint8))
        return full[dr : dr + scene.info.height, dc : dc + scene.info.width]

    return parts


def _region_parts(scenes: list[TrainingScene], options: SplitOptions):
    """Validation inside ``val_regions``, test inside ``test_regions``, training elsewhere (per scene, on
    demand)."""
    from torchbearer.ml.labels import rasterize_labels

    def parts(index: int) -> np.ndarray:
        scene = scenes[index]
        part = np.full((scene.info.height, scene.info.width), TRAIN, np.uint8)
        for path, value in ((options.val_regions, VAL), (options.test_regions, TEST)):
            if path is not None:
                part[rasterize_labels(Path(path), scene.info, ["outside", "inside"]) == 1] = value
        return part

    return parts


def make_split(
    scenes: list[TrainingScene], patch_size: int, options: SplitOptions, seed: int, num_classes: int = 0
) -> Split:
    """Split the scenes (blocks, or given regions) and list the patches each part may use.

    Raises:
        DataError: too few labelled blocks, or a part without a single patch.
    """
    by_regions = options.val_regions is not None
    make = _region_parts(scenes, options) if by_regions else _block_parts(scenes, options, seed)
    split = Split(parts=_Parts(make, len(scenes)))
    cell = math.gcd(patch_size // 8 or 1, patch_size if by_regions else options.block_size)  # origins' grid
    k = patch_size // cell
    counts = np.zeros(256, np.int64)
    present = []
    found: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for index, scene in enumerate(scenes):
        part_pixels = split.parts[index]
        # The origins' grid follows the blocks' (on the CRS grid): pad the scene's top and left up to it.
        _, _, dr, dc = _grid_offset(scene.info, options.block_size)
        pad = ((0, 0), (0, 0)) if by_regions else ((dr % cell, 0), (dc % cell, 0))

        def cells(mask: np.ndarray, fill: bool = False, pad=pad) -> np.ndarray:
            return _cell_counts(np.pad(mask, pad, constant_values=fill), cell, fill)

        labelled_pixels = scene.target != IGNORE
        labelled = _window_sums(cells(labelled_pixels), k)
        training = part_pixels == TRAIN
        split.train_area.append(int((training & labelled_pixels).sum()))
        counts += np.bincount(scene.target[training], minlength=256)
        for part, name in ((TRAIN, "train"), (VAL, "val"), (TEST, "test")):
            # Windows reaching past the scene's edge count as outside (padding with True).
            outside = _window_sums(cells(part_pixels != part, fill=True), k)
            rows, cols = np.nonzero((outside == 0) & (labelled > 0))
            origins = np.stack([np.full(len(rows), index), rows * cell - pad[0][0], cols * cell - pad[1][0]], axis=1)
            if name != "train":
                origins = _non_overlapping(origins.astype(np.int64), patch_size)
            else:  # which classes each training patch holds, for oversampling rare ones
                present.append(np.stack([_window_sums(cells(scene.target == c), k)[rows, cols] > 0
                                         for c in range(num_classes)], axis=1) if num_classes else None)  # fmt: skip
            found[name].append(origins.astype(np.int64).reshape(-1, 3))
        scene.release()
    for name, arrays in found.items():
        setattr(split, name, np.concatenate(arrays) if arrays else no_origins())
    split.class_counts = counts[: num_classes or int(np.flatnonzero(counts[:IGNORE]).max(initial=0)) + 1].tolist()
    if num_classes:
        split.train_classes = np.concatenate(present) if present else np.zeros((0, num_classes), bool)
    wanted_test = options.test_fraction > 0 if not by_regions else options.test_regions is not None
    where = "regions" if by_regions else f"blocks of {options.block_size} px"
    for name, wanted in (("train", True), ("val", True), ("test", wanted_test)):
        if wanted and not len(getattr(split, name)):
            raise DataError(
                f"no {name} patch of {patch_size} px fits wholly in the {name} {where} with a label: "
                f"lower patch_size or {'widen the regions' if by_regions else 'raise block_size'}"
            )
    return split


def _non_overlapping(origins: np.ndarray, size: int) -> np.ndarray:
    """Origins (of one scene) kept in raster order so that no two windows overlap (a grid where the blocks
    allow)."""
    kept: list[int] = []
    for i in np.lexsort((origins[:, 2], origins[:, 1])):
        r, c = origins[i, 1], origins[i, 2]
        if not kept or (np.maximum(abs(origins[kept, 1] - r), abs(origins[kept, 2] - c)) >= size).all():
            kept.append(int(i))
    return origins[kept]


def inverse_frequencies(counts: list[int], names: list[str] | None = None) -> list[float]:
    """Class weights from training pixel counts: ``total / (classes × count)`` (1 for every class when they
    are balanced; scikit-learn's "balanced").

    Raises:
        DataError: a class without a single training pixel (its weight would be infinite).
    """
    missing = [names[i] if names else str(i) for i, n in enumerate(counts) if n == 0]
    if missing:
        raise DataError(f"class_weights: auto: no training pixel of class {', '.join(missing)}")
    total = sum(counts)
    return [total / (len(counts) * n) for n in counts]


# -- statistics and the input check ----------------------------------------------------------------------------


def band_stats(scenes: list[TrainingScene], split: Split) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of reflectance over valid pixels of the training blocks.

    A regular subsample (about ``STATS_SAMPLES`` pixels in all), summed strip by strip in float64: the memory
    it takes does not grow with the number or size of the scenes.
    """
    total = sum(s.target.size for s in scenes)
    stride = max(1, int(math.sqrt(total / STATS_SAMPLES)))
    bands = len(scenes[0].info.bands)
    count, sums, squares = 0, np.zeros(bands), np.zeros(bands)
    strip = stride * 256  # rows a step
    for index, scene in enumerate(scenes):
        parts = split.parts[index]
        scale, shift = scene.info.reflectance_terms
        for row in range(0, scene.info.height, strip):
            part = parts[row : row + strip : stride, ::stride]
            dn = np.asarray(scene.dn[:, row : row + strip : stride, ::stride])
            if scene.band_index is not None:
                dn = dn[scene.band_index]
            keep = (part == TRAIN) & (dn != 0).all(axis=0)
            values = dn[:, keep].astype(np.float64) * scale + shift
            count += values.shape[1]
            sums += values.sum(axis=1)
            squares += np.square(values).sum(axis=1)
        del parts
        scene.release()
    if count == 0:
        raise InputCheckError("the training blocks hold no valid pixel: every pixel is no data (DN 0)")
    mean = sums / count
    return mean.tolist(), np.sqrt(np.maximum(squares / count - mean**2, 0.0)).tolist()


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


def train_class_counts(scenes: list[TrainingScene], split: Split) -> np.ndarray:
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
    cache_dir: Path | None = None,
    work_dir: Path | None = None,
    skipped: list[str] | None = None,
) -> list[TrainingScene]:
    """Every stack with its target; ``masks`` may name files or folders of them. Scenes no mask labels are
    logged, named in ``skipped`` (with why) and left out; ``cache_dir`` / ``work_dir`` as in
    :func:`load_scene`.

    Raises:
        DataError: no stack, no stack with labels, or stacks at different resolutions (and the errors of
            :func:`load_scene`).
    """
    if not stacks:
        raise DataError("no scene to train on")
    files = [m for path in masks for m in mask_files(Path(path))]
    scenes: list[TrainingScene] = []
    left_out: list[str] = []
    for stack in stacks:
        try:
            scene = load_scene(Path(stack), bands, files, classes, class_field, resolution,
                               cache_dir=cache_dir, work_dir=work_dir)  # fmt: skip
        except NoLabels as exc:
            log.warning("skipped: %s", exc)
            left_out.append(str(exc))
            continue
        bands = bands or list(scene.info.bands)
        if scenes and scene.info.resolution != scenes[0].info.resolution:
            raise DataError(
                f"scene {scene.info.path.name} is at {scene.info.resolution:g} m, {scenes[0].info.path.name} at "
                f"{scenes[0].info.resolution:g} m: train on one resolution"
            )
        scenes.append(scene)
    if skipped is not None:
        skipped.extend(left_out)
    if not scenes:
        raise DataError("no scene has labels: " + "; ".join(left_out))
    return scenes
