"""The inputs an explanation looks at, as georeferenced patches of DN in the model's band order.

Sources: a folder of GeoTIFF patches (each a small stack: uint16 DN with band descriptions, or the bands
of its resolution in stack order), a classifier's patch folder (``classify``'s layouts), the validation patches
of a train or a classify job's split, or the windows of a scene (non-overlapping, all-no-data ones skipped).
Each patch keeps its grid (CRS, transform) so that its embedding gets coordinates and its footprint goes into
the GeoPackage.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from torchbearer.explain.model import ExplainError
from torchbearer.imagery.cache import StackError, StackInfo, band_indexes, stack_info, valid_pixels
from torchbearer.inference.windows import WindowGrid
from torchbearer.ml.checkpoint import ModelCard, standardising_terms

if TYPE_CHECKING:
    from torchbearer.ml.patches import PatchSet


@dataclass
class Patch:
    """One input: ``dn`` (bands × H × W, uint16, the model's bands in its order), the reflectance terms of its
    stack, its grid (``crs``, ``transform`` of its top-left pixel; None for a patch without georeferencing) and
    a name for file names and tables. ``masked``: DN 0 is no data (fed as the mean, as ``train`` and ``predict``
    do); False for a classifier's patches, which ``classify`` trains on whole, in their own units."""

    name: str
    dn: np.ndarray
    terms: tuple[float, float]
    crs: Any
    transform: Affine | None
    masked: bool = True

    @property
    def valid(self) -> np.ndarray:
        """Where the patch has data (H × W)."""
        if not self.masked:
            return np.ones(self.dn.shape[-2:], dtype=bool)
        return valid_pixels(self.dn)

    @property
    def georeferenced(self) -> bool:
        """The patch has a CRS and a grid (so a centre in lon, lat and a footprint)."""
        return self.crs is not None and self.transform is not None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in CRS units."""
        assert self.transform is not None
        h, w = self.dn.shape[-2:]
        left, top = self.transform * (0, 0)
        right, bottom = self.transform * (w, h)
        return min(left, right), min(top, bottom), max(left, right), max(top, bottom)

    @property
    def centre(self) -> tuple[float, float]:
        """``(x, y)`` of the patch's centre in CRS units."""
        assert self.transform is not None
        h, w = self.dn.shape[-2:]
        return self.transform * (w / 2, h / 2)


def standardise(patch: Patch, card: ModelCard) -> np.ndarray:
    """The network's input for ``patch`` (bands × H × W float32): as in training and prediction, no data → 0."""
    a, b = standardising_terms(patch.terms, card.norm["mean"], card.norm["std"])
    x = patch.dn.astype(np.float32) * a[:, None, None] + b[:, None, None]
    x *= patch.valid
    return x


def check_bands(info: StackInfo, card: ModelCard) -> list[int]:
    """The stack's band indexes in the model's order; a clear error when the stack does not fit the model."""
    if round(info.resolution, 3) != round(float(card.resolution), 3):
        raise ExplainError(f"{info.path} is at {info.resolution:g} m; the model was trained at {card.resolution:g} m")
    try:
        return band_indexes(info, card.bands)
    except StackError as exc:
        raise ExplainError(f"{exc}; the model needs {' '.join(card.bands)}") from None


def folder_patches(folder: Path, card: ModelCard) -> list[Patch]:
    """Every GeoTIFF (``*.tif``, ``*.tiff``) of ``folder`` as a patch, by file name."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    if not files:
        raise ExplainError(f"patches folder {folder} holds no GeoTIFF (.tif)")
    patches = []
    for path in files:
        try:
            info = stack_info(path, int(card.resolution))
        except StackError as exc:
            raise ExplainError(str(exc)) from None
        indexes = check_bands(info, card)
        with rasterio.open(path) as ds:
            dn = ds.read(indexes)
        patches.append(Patch(path.stem, dn, info.reflectance_terms, info.crs, info.transform))
    return patches


def spread(items: list, count: int) -> list:
    """At most ``count`` of ``items``, evenly spaced from first to last (so a folder sorted by class gives
    patches of every class, not ``count`` of the first)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))]


def classifier_patches(root: Path, card: ModelCard, count: int = 10_000) -> list[Patch]:
    """The patches of a classifier (``classify``'s layouts, ``ml/patches.py``) under ``root``, in the card's
    band order and the patches' own units (``terms`` (1, 0): the card's statistics are in those units), fed
    whole. ``folders``: every image under ``root``, class folders or not, named by relative path;
    ``bigearthnet``: every ``<patch>/`` folder with a ``<patch>_<band>.tif`` per band, resampled onto the
    finest band's grid as in training. GeoTIFFs keep their grid; PNG / JPEG patches have none. At most
    ``count``, spread over the folder (:func:`spread`), are read."""
    from torchbearer.ml.patches import IMAGE_SUFFIXES, PatchDataError, find_layout, read_bigearthnet

    root = Path(root)
    if not root.is_dir():
        raise ExplainError(f"patches folder {root} does not exist")
    patches = []
    try:
        if find_layout(root) == "bigearthnet":
            for folder in spread(sorted(p for p in root.iterdir() if p.is_dir()), count):
                dn = read_bigearthnet(folder, list(card.bands))
                crs, transform = _finest_grid([folder / f"{folder.name}_{b}.tif" for b in card.bands])
                patches.append(Patch(folder.name, dn, (1.0, 0.0), crs, transform, masked=False))
        else:
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            for path in spread(files, count):
                dn, crs, transform = _classifier_patch(path, card)
                patches.append(Patch(_patch_name(path, root), dn, (1.0, 0.0), crs, transform, masked=False))
    except PatchDataError as exc:
        raise ExplainError(str(exc)) from None
    if not patches:
        raise ExplainError(f"patches folder {root} holds no patches ({', '.join(IMAGE_SUFFIXES)}, or BigEarthNet "
                           "patch folders)")  # fmt: skip
    _check_size(patches, card, root)
    return patches


def classify_validation_patches(patch_set: PatchSet, indexes: np.ndarray, card: ModelCard,
                                count: int = 10_000) -> list[Patch]:  # fmt: skip
    """The validation patches of a classify job: ``indexes`` (its split's ``val``) into ``patch_set`` (the
    arrays it trained and validated on), at most ``count`` spread over them (the split is sorted by class
    folder: :func:`spread`). As :func:`classifier_patches` reads a folder: the card's bands, the patches' own
    units, fed whole, named and georeferenced by their files."""
    bands = list(patch_set.bands)
    missing = [b for b in card.bands if b not in bands]
    if missing:
        raise ExplainError(f"the patches of {patch_set.root} lack bands {' '.join(missing)} the classifier was "
                           f"trained on (they have {' '.join(bands)})")  # fmt: skip
    pick = [bands.index(b) for b in card.bands]
    patches = []
    for i in spread([int(i) for i in indexes], count):
        path = patch_set.root / patch_set.paths[i]
        if path.is_dir():  # a BigEarthNet patch folder
            crs, transform = _finest_grid([path / f"{path.name}_{b}.tif" for b in card.bands])
        else:
            crs, transform = _file_grid(path)
        dn = np.asarray(patch_set.images[i][pick])
        patches.append(Patch(_patch_name(path, patch_set.root), dn, (1.0, 0.0), crs, transform, masked=False))
    _check_size(patches, card, patch_set.root)
    return patches


def _patch_name(path: Path, root: Path) -> str:
    """A classifier patch's name for files and tables: a BigEarthNet folder's name, else the file's path
    under ``root`` without its suffix, ``/`` as ``_`` (``water/x.tif`` → ``water_x``)."""
    if path.is_dir():
        return path.name
    return path.relative_to(root).with_suffix("").as_posix().replace("/", "_")


def _check_size(patches: list[Patch], card: ModelCard, root: Path) -> None:
    """Refuse patches of another size than the classifier's training patches."""
    size = card.extra.get("patch_size")
    wrong = [p for p in patches if size is not None and p.dn.shape[-2:] != (size, size)]
    if wrong:
        shape = wrong[0].dn.shape
        raise ExplainError(f"patch {wrong[0].name} is {shape[2]} × {shape[1]} pixels; the classifier takes {size} × "
                           f"{size} ({len(wrong)} such patches in {root})")  # fmt: skip


def _classifier_patch(path: Path, card: ModelCard) -> tuple[np.ndarray, Any, Affine | None]:
    """A patch file's pixels in the card's band order, its CRS and transform (None, None without them)."""
    from torchbearer.ml.patches import read_patch

    data, names = read_patch(path)
    missing = [b for b in card.bands if b not in names]
    if missing:
        raise ExplainError(f"patch {path} lacks bands {' '.join(missing)} the classifier was trained on (it has "
                           f"{' '.join(names)})")  # fmt: skip
    return (data[[names.index(b) for b in card.bands]], *_file_grid(path))


def _file_grid(path: Path) -> tuple[Any, Affine | None]:
    """A patch file's CRS and transform; (None, None) for one without a grid (PNG / JPEG)."""
    with warnings.catch_warnings():  # a PNG / JPEG patch has no grid: said by returning None
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            crs, transform = ds.crs, ds.transform
    return crs, (transform if crs is not None else None)


def _finest_grid(files: list[Path]) -> tuple[Any, Affine]:
    """CRS and transform of the finest of a BigEarthNet patch's band files (the grid its bands are read on)."""
    grids = []
    for path in files:
        with rasterio.open(path) as ds:
            grids.append((abs(ds.transform.a), ds.crs, ds.transform))
    _, crs, transform = min(grids, key=lambda g: g[0])
    return crs, transform


def scene_window_patches(stack: Path, card: ModelCard, size: int) -> Iterator[Patch]:
    """The windows of ``size`` pixels tiling a stack (the last of a row or column moved back to end at the
    scene's edge, so every window lies inside it), all-no-data ones skipped; read one at a time. A scene
    smaller than a window gets windows of its smaller side, rounded down to a multiple of 32 pixels."""
    try:
        info = stack_info(stack)
    except StackError as exc:
        raise ExplainError(str(exc)) from None
    indexes = check_bands(info, card)
    side = min(info.height, info.width)
    if side < size:
        size = side // 32 * 32
        if size == 0:
            raise ExplainError(f"{stack} is {info.width} × {info.height} pixels: too small for a 32-pixel window")
    grid = WindowGrid.over(info.height, info.width, size, 0.0)
    with rasterio.open(stack) as ds:
        for r in grid.rows:
            for c in grid.cols:
                window = Window(c, r, size, size)
                dn = ds.read(indexes, window=window)
                if valid_pixels(dn).any():
                    name = f"{info.path.stem}_r{r}_c{c}"
                    yield Patch(name, dn, info.reflectance_terms, info.crs, ds.window_transform(window))


def job_validation_patches(scenes: list[Any], origins: Any, size: int, count: int,
                           card: ModelCard) -> list[Patch]:  # fmt: skip
    """The first ``count`` validation patches (``origins``: scene, row, column) of a train job's scenes."""
    patches = []
    for scene_index, r, c in origins[:count]:
        scene = scenes[scene_index]
        bands = list(scene.info.bands)
        missing = [b for b in card.bands if b not in bands]
        if missing:
            raise ExplainError(f"the job's scene lacks the model's bands {' '.join(missing)}")
        pick = [bands.index(b) for b in card.bands]
        dn = scene.dn[pick, r : r + size, c : c + size]
        transform = scene.info.transform * Affine.translation(c, r)
        patches.append(Patch(f"{scene.info.path.stem}_r{r}_c{c}", dn, scene.info.reflectance_terms,
                             scene.info.crs, transform))  # fmt: skip
    return patches


def batches(patches: list[Patch], size: int) -> Iterator[list[Patch]]:
    """Consecutive patches of one shape, at most ``size`` a batch."""
    batch: list[Patch] = []
    for patch in patches:
        if batch and (len(batch) == size or batch[0].dn.shape != patch.dn.shape):
            yield batch
            batch = []
        batch.append(patch)
    if batch:
        yield batch
