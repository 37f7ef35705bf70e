"""Chip folders for training: frames and masks cut beforehand (``prepare``'s chip step, or any chipper).

Layout (the roof-classify seed's)::

    <folder>/train_frames/train_0.tif …   train_masks/train_0.tif …
             val_frames/val_0.tif …       val_masks/val_0.tif …
             test_frames/ test_masks/     (optional)
             prepare.json                 (optional: what made them, the value domain)

A frame is a GeoTIFF of any band count and any size; its mask (same file name) holds class indices on the same
grid, 255 where there is no label. Frames carry their value domain in the tag ``VALUE_DOMAIN``: ``dn``
(Sentinel-2 digital numbers; reflectance = (DN + ``BOA_ADD_OFFSET``) / ``QUANTIFICATION_VALUE``, DN 0 no data),
``reflectance`` (0–1) or ``uint8`` (0–255 display values, taken as value / 255). Training feeds the network the
same standardised input as it does from scenes, with statistics of the training chips, and records the domain
in the model card (``extra.value_domain``) so a prediction can refuse input of another domain.

Chips are read from disk per patch (a chip folder may be larger than memory): random crops of ``patch_size``
for training (or the whole chip resized to it), a grid of crops covering each chip for validation
(a patch apart, the last flush with the edge).
The module imports torch and Lightning (the DataModule): job specs must not import it.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from torch.utils.data import Dataset

from torchbearer.ml.datamodules import Item, PatchDataModule
from torchbearer.ml.domains import DOMAIN_TAG, VALUE_DOMAINS, domain_terms, guess_domain
from torchbearer.ml.labels import IGNORE
from torchbearer.ml.scenes import STATS_SAMPLES, DataError, InputCheckError, check_classes, check_inputs

log = logging.getLogger(__name__)

#: Parts of a chip folder, in order; ``test`` is optional.
SPLITS = ("train", "val", "test")
#: Chips whose masks are counted for the class check and read for the statistics, at most (spread evenly).
STATS_CHIPS = 512

Fit = Literal["crop", "resize"]


class ChipError(DataError):
    """A chip folder cannot be used: wrong layout, a frame without its mask, mixed bands or domains."""


@dataclass(frozen=True)
class Chip:
    """One frame and its mask; size in pixels; ``terms`` turn its values into reflectance-like units."""

    frame: Path
    mask: Path
    height: int
    width: int
    terms: tuple[float, float]
    nodata: float | None


@dataclass
class ChipSet:
    """The chips of a folder by split, with what they share: band names, value domain, pixel size (CRS units)."""

    root: Path
    splits: dict[str, list[Chip]]
    bands: list[str]
    domain: str
    resolution: float
    prepare: dict[str, Any] = field(default_factory=dict)

    @property
    def chips(self) -> list[Chip]:
        """Every chip, train first: the indices the DataModule's origins use."""
        return [c for name in SPLITS for c in self.splits.get(name, [])]


def frame_domain(tags: dict[str, str], dtype: str, default: str | None, where: Path) -> str:
    """The value domain of a frame: its tag, else the folder's ``prepare.json``, else guessed from the dtype."""
    domain = (tags.get(DOMAIN_TAG) or default or "").strip().lower()
    if not domain:
        domain = guess_domain(dtype)
        log.warning("%s: no %s tag; %s values taken as %s", where, DOMAIN_TAG, dtype, domain)
    if domain not in VALUE_DOMAINS:
        raise ChipError(f"{where}: {DOMAIN_TAG} {domain!r} is not one of {', '.join(VALUE_DOMAINS)}")
    return domain


def _chip_number(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)$", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def open_chips(root: Path) -> ChipSet:
    """Index a chip folder and check it: both folders of train and val, a mask for every frame, one band set
    and one value domain throughout, masks of one band on their frame's grid.

    Raises:
        ChipError: naming the folder or the files at fault.
    """
    root = Path(root)
    if not root.is_dir():
        raise ChipError(f"dataset {root}: not a folder of chips")
    prepare = {}
    if (root / "prepare.json").is_file():
        try:
            prepare = json.loads((root / "prepare.json").read_text())
        except json.JSONDecodeError as exc:
            raise ChipError(f"{root / 'prepare.json'}: not JSON ({exc})") from None
    default_domain = prepare.get("value_domain") if isinstance(prepare, dict) else None
    splits: dict[str, list[Chip]] = {}
    bands: list[str] | None = None
    domain: str | None = None
    resolution = 0.0
    for name in SPLITS:
        frames_dir, masks_dir = root / f"{name}_frames", root / f"{name}_masks"
        if not frames_dir.is_dir():
            if name != "test":
                raise ChipError(f"dataset {root}: no {frames_dir.name}/ folder (layout: train_frames/ "
                                "train_masks/ val_frames/ val_masks/, optionally test_…)")  # fmt: skip
            continue
        frames = sorted((p for p in frames_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff")), key=_chip_number)
        if not frames:
            raise ChipError(f"dataset {root}: {frames_dir.name}/ holds no .tif frame")
        missing = [f.name for f in frames if not (masks_dir / f.name).is_file()]
        if missing:
            raise ChipError(f"dataset {root}: {len(missing)} frames without a mask in {masks_dir.name}/: "
                            f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")  # fmt: skip
        chips = []
        for frame in frames:
            chip, chip_bands, chip_domain, res = _read_chip(frame, masks_dir / frame.name, default_domain)
            if bands is None:
                bands, domain, resolution = chip_bands, chip_domain, res
            elif chip_bands != bands:
                raise ChipError(f"{frame}: bands {chip_bands}, other chips have {bands}: one band set per dataset")
            elif chip_domain != domain:
                raise ChipError(f"{frame}: value domain {chip_domain}, other chips are {domain}: one domain a dataset")
            chips.append(chip)
        splits[name] = chips
    assert bands is not None and domain is not None
    return ChipSet(root, splits, bands, domain, resolution, prepare if isinstance(prepare, dict) else {})


def _read_chip(frame: Path, mask: Path, default_domain: str | None) -> tuple[Chip, list[str], str, float]:
    try:
        with rasterio.open(frame) as ds:
            tags, dtype, count = ds.tags(), ds.dtypes[0], ds.count
            shape, nodata, descriptions = (ds.height, ds.width), ds.nodata, ds.descriptions
            resolution = abs(ds.transform.a) if ds.crs is not None else 0.0
        with rasterio.open(mask) as ms:
            mask_count, mask_shape = ms.count, (ms.height, ms.width)
    except rasterio.RasterioIOError as exc:
        raise ChipError(f"chip {frame.name}: not readable ({exc})") from None
    if mask_count != 1 or mask_shape != shape:
        raise ChipError(f"{mask}: {mask_count} bands of {mask_shape[0]}×{mask_shape[1]} px; its frame is "
                        f"{shape[0]}×{shape[1]} px: a mask is one band on its frame's grid")  # fmt: skip
    bands = list(descriptions) if all(descriptions) else [f"band_{i}" for i in range(1, count + 1)]
    domain = frame_domain(tags, dtype, default_domain, frame)
    if domain == "dn" and nodata is None:
        nodata = 0.0  # DN 0 is no data in Sentinel-2 products
    chip = Chip(frame, mask, shape[0], shape[1], domain_terms(domain, tags), nodata)
    return chip, bands, domain, resolution


def read_chip(chip: Chip, window: Window | None = None, out_size: int | None = None) -> tuple[np.ndarray, ...]:
    """(values bands × H × W, mask H × W uint8, no-data H × W bool) of a chip.

    ``window`` crops (pixels past the chip's edge read as no data, mask 255); ``out_size`` resamples the whole
    chip to a square of that edge (bilinear for values, nearest for the mask).
    """
    shape = (out_size, out_size) if out_size else None
    kwargs: dict[str, Any] = {"window": window, "boundless": window is not None}
    with rasterio.open(chip.frame) as ds:
        values = ds.read(
            out_shape=(ds.count, *shape) if shape else None,
            resampling=Resampling.bilinear,
            fill_value=chip.nodata if chip.nodata is not None else 0,
            **kwargs,
        )
    with rasterio.open(chip.mask) as ms:
        mask = ms.read(1, out_shape=shape, resampling=Resampling.nearest, fill_value=IGNORE, **kwargs)
    nodata = (values == chip.nodata).any(axis=0) if chip.nodata is not None else np.zeros(mask.shape, bool)
    if values.dtype.kind == "f":  # NaN as no data (or a NaN nodata value, which == never matches)
        finite = np.isfinite(values)
        if not finite.all():
            nodata |= ~finite.all(axis=0)
            values[~finite] = 0  # no-data pixels are zeroed after standardising; NaN × 0 would stay NaN
    if window is not None:  # outside the chip: no data whatever the nodata value
        outside = np.ones(mask.shape, bool)
        outside[: max(0, chip.height - int(window.row_off)), : max(0, chip.width - int(window.col_off))] = False
        nodata |= outside
    mask = mask.astype(np.uint8, copy=False)
    mask[nodata] = IGNORE
    return values, mask, nodata


# -- the DataModule --------------------------------------------------------------------------------------------


@dataclass
class ChipSplit:
    """Patch origins (origins × 3 int64: chip index, row, column, pixels within the chip) of each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _grid(length: int, patch: int, step: int) -> list[int]:
    """Offsets of patches along one side: every ``step`` pixels, the last one flush with the end."""
    if length <= patch:
        return [0]
    offsets = list(range(0, length - patch + 1, step))
    return offsets if offsets[-1] == length - patch else [*offsets, length - patch]


class ChipDataset(Dataset):
    """Patches of chips at origins: (chip index, values, target, no-data mask, augmentation code)."""

    def __init__(self, chips: list[Chip], patch_size: int, fit: Fit, origins: np.ndarray) -> None:
        self.chips = chips
        self.size = patch_size
        self.fit = fit
        self.origins = origins

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, item: int | tuple[int, int, int, int]) -> Item:
        index, r, c, aug = item if isinstance(item, tuple) else (*self.origins[item], 0)
        chip = self.chips[index]
        if self.fit == "resize" and (chip.height, chip.width) != (self.size, self.size):
            values, mask, nodata = read_chip(chip, out_size=self.size)
        else:
            values, mask, nodata = read_chip(chip, Window(c, r, self.size, self.size))
        return index, values, mask, nodata, aug


class ChipDataModule(PatchDataModule):
    """A chip folder → train / val / test DataLoaders of normalised, augmented patches of ``patch_size``.

    Args:
        chips: from :func:`open_chips`.
        classes: class names (the masks hold their indices).
        fit: ``crop``: random crops of ``patch_size`` (chips smaller than it are padded with no data);
            ``resize``: each chip resampled to ``patch_size``.
        samples_per_epoch: training patches an epoch (None: the training chips' area over a patch's, at
            least one batch).
    """

    def __init__(
        self,
        chips: ChipSet,
        classes: list[str],
        *,
        patch_size: int = 256,
        batch_size: int = 16,
        fit: Fit = "crop",
        samples_per_epoch: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__(
            patch_size=patch_size, batch_size=batch_size, num_workers=num_workers, seed=seed, augment=augment
        )
        self.chipset = chips
        self.chips = chips.chips
        self.classes = classes
        self.bands = list(chips.bands)
        self.fit: Fit = fit
        self.samples_per_epoch = samples_per_epoch
        self.value_domain = chips.domain

    def _origins(self, split: str) -> list[tuple[int, int, int]]:
        first = sum(len(self.chipset.splits.get(s, [])) for s in SPLITS[: SPLITS.index(split)])
        origins = []
        # Training crops start on a grid of an eighth of a patch; evaluation crops tile each chip once.
        step = max(1, self.patch_size // 8) if split == "train" else self.patch_size
        for i, chip in enumerate(self.chipset.splits.get(split, []), first):
            if self.fit == "resize":
                origins.append((i, 0, 0))
                continue
            origins += [(i, r, c) for r in _grid(chip.height, self.patch_size, step)
                        for c in _grid(chip.width, self.patch_size, step)]  # fmt: skip
        return origins

    def setup(self, stage: str | None = None) -> None:
        """Origins, statistics of the training chips, and the input and class checks (once)."""
        if self.split is not None:
            return
        self.split = ChipSplit(
            *(np.asarray(self._origins(s), np.int64).reshape(-1, 3) for s in ("train", "val", "test"))
        )
        train = self.chipset.splits["train"]
        picked = [train[i] for i in np.linspace(0, len(train) - 1, min(len(train), STATS_CHIPS)).round().astype(int)]
        self.mean, self.std = chip_stats(picked, len(self.bands))
        check_inputs(self.bands, self.mean, self.std)
        counts = np.zeros(IGNORE, np.int64)
        for chip in train if len(train) <= 4 * STATS_CHIPS else picked:
            with rasterio.open(chip.mask) as ms:
                counts += np.bincount(ms.read(1).ravel(), minlength=256)[:IGNORE]
        check_classes(counts, self.classes)
        bad = np.nonzero(counts[len(self.classes) :])[0]
        if bad.size:
            raise ChipError(f"dataset {self.chipset.root}: masks hold values {(bad + len(self.classes)).tolist()[:5]}"
                            f" that are not classes 0 … {len(self.classes) - 1} (255 is no label)")  # fmt: skip
        log.info(
            "%s: %d bands (%s); chips %s; patches: %d train origins, %d val, %d test",
            self.chipset.root, len(self.bands), self.chipset.domain,
            {k: len(v) for k, v in self.chipset.splits.items()},
            len(self.split.train), len(self.split.val), len(self.split.test),
        )  # fmt: skip

    @property
    def train_samples(self) -> int:
        """Training patches an epoch."""
        if self.samples_per_epoch:
            return self.samples_per_epoch
        if self.fit == "resize":
            return max(self.batch_size, len(self.chipset.splits["train"]))
        area = sum(c.height * c.width for c in self.chipset.splits["train"])
        return max(self.batch_size, area // self.patch_size**2)

    @property
    def reflectance_terms(self) -> list[tuple[float, float]]:
        return [chip.terms for chip in self.chips]

    @property
    def source_names(self) -> list[str]:
        return [chip.frame.name for chip in self.chips]

    def dataset(self, origins: np.ndarray) -> Dataset:
        return ChipDataset(self.chips, self.patch_size, self.fit, origins)


def chip_stats(chips: list[Chip], bands: int) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation (reflectance-like units) over the valid pixels of ``chips``."""
    total = sum(c.height * c.width for c in chips)
    stride = max(1, int(math.sqrt(total / STATS_SAMPLES)))
    samples = []
    for chip in chips:
        values, _, nodata = read_chip(chip)
        scale, shift = chip.terms
        values, keep = values[:, ::stride, ::stride], ~nodata[::stride, ::stride]
        samples.append(values[:, keep].astype(np.float64) * scale + shift)
    data = np.concatenate(samples, axis=1) if samples else np.empty((bands, 0))
    if data.shape[1] == 0:
        raise InputCheckError("the training chips hold no valid pixel: every pixel is no data")
    return data.mean(axis=1).tolist(), data.std(axis=1).tolist()
