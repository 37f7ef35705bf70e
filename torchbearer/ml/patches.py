"""Patch classification data: folders of patches scanned once into one memory-mapped array.

Layouts (:func:`find_layout`):

- ``folders`` (EuroSAT): ``<root>/<class>/<patch>`` — or ``<root>/{train,valid,test}/<class>/<patch>`` with the
  split given. Patches are GeoTIFFs of any band count (band names from the band descriptions; ``band1`` …
  without them) or PNG / JPEG RGB (bands ``red``, ``green``, ``blue``). Single-label.
- ``bigearthnet``: ``<root>/<patch>/<patch>_<band>.tif`` (one GeoTIFF per band, at 10, 20 or 60 m) and
  ``<patch>_labels_metadata.json`` (``labels``: a list of class names). Every band is resampled (bilinear)
  onto the grid of the finest band asked for. Multi-label.

:func:`load_patch_set` reads every patch once into ``<cache>/patches-<key>.npy`` (N × bands × H × W, the
patches' own dtype and units) with ``patches-<key>.json`` beside it (paths, labels, classes, bands, and a
fingerprint of the folder: the relative path, size and modification time of every file). A later job on the
same folder memory-maps the array; a changed folder (a file added, removed, rewritten) rebuilds it. An epoch
then slices the array instead of opening thousands of small files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

#: File endings read as patches in the ``folders`` layout.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: Folder names of a given split (``val`` is taken for ``valid``).
SPLIT_FOLDERS = {"train": 0, "valid": 1, "val": 1, "test": 2}
SPLITS = ("train", "val", "test")
#: BigEarthNet band files, in the order of the stack.
BIGEARTHNET_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
RGB_NAMES = ("red", "green", "blue")
CACHE_VERSION = 1

Layout = Literal["auto", "folders", "bigearthnet"]


class PatchDataError(ValueError):
    """A patch folder cannot be used (the message names the file or folder and what is wrong)."""


@dataclass(frozen=True)
class PatchSet:
    """Every patch of a folder, in memory-mapped arrays.

    ``images``: N × bands × H × W (the patches' dtype); ``labels``: N class indexes (single-label) or
    N × classes of 0/1 (multi-label); ``given_split``: N split indexes (0 train, 1 val, 2 test) when the
    folder gives them, else None; ``paths``: each patch relative to ``root``.
    """

    root: Path
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    bands: list[str]
    paths: list[str]
    multilabel: bool
    given_split: np.ndarray | None
    cache: Path

    def __len__(self) -> int:
        return len(self.paths)

    def split(self, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
        """Indexes of the train / val / test patches: the folder's own split, or a seeded draw of fractions,
        stratified by class for single-label sets."""
        if self.given_split is not None:
            return {name: np.flatnonzero(self.given_split == i) for i, name in enumerate(SPLITS)}
        return fraction_split(self.labels, val_fraction, test_fraction, seed, stratify=not self.multilabel)

    def class_counts(self, indexes: np.ndarray) -> np.ndarray:
        """Patches per class among ``indexes`` (multi-label: patches carrying each class)."""
        labels = self.labels[indexes]
        if self.multilabel:
            return labels.sum(axis=0).astype(np.int64)
        return np.bincount(labels, minlength=len(self.classes))

    def band_stats(self, indexes: np.ndarray, chunk: int = 1024) -> tuple[list[float], list[float]]:
        """Per-band mean and standard deviation over the patches ``indexes`` (the patches' units)."""
        total = np.zeros(len(self.bands))
        squares = np.zeros(len(self.bands))
        count = 0
        for start in range(0, len(indexes), chunk):
            block = self.images[np.sort(indexes[start : start + chunk])].astype(np.float64)
            total += block.sum(axis=(0, 2, 3))
            squares += (block**2).sum(axis=(0, 2, 3))
            count += block.shape[0] * block.shape[2] * block.shape[3]
        if count == 0:
            raise PatchDataError(f"{self.root}: the training split holds no patches")
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0))
        flat = [self.bands[i] for i in np.flatnonzero(std == 0)]
        if flat:
            raise PatchDataError(f"{self.root}: bands {', '.join(flat)} are constant over the training patches")
        return mean.tolist(), std.tolist()


def fraction_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int, stratify: bool
) -> dict[str, np.ndarray]:
    """A seeded split of ``len(labels)`` patches by fractions; stratified keeps each class's share."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    held = val_fraction + test_fraction
    if held <= 0:
        return {"train": index, "val": index[:0], "test": index[:0]}
    strata = labels if stratify else None
    try:
        train, rest = train_test_split(index, test_size=held, random_state=seed, stratify=strata)
        if test_fraction <= 0:
            return {"train": np.sort(train), "val": np.sort(rest), "test": index[:0]}
        val, test = train_test_split(rest, test_size=test_fraction / held, random_state=seed,
                                     stratify=labels[rest] if stratify else None)  # fmt: skip
    except ValueError as exc:  # a class too small to be in every split
        raise PatchDataError(f"cannot split {len(labels)} patches by class ({exc}); give a train/valid/test layout "
                             "or more patches per class") from None  # fmt: skip
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


# -- scanning ---------------------------------------------------------------------------------------------------


def find_layout(root: Path) -> Literal["folders", "bigearthnet"]:
    """``bigearthnet`` when the sub-folders hold ``*_labels_metadata.json`` files, else ``folders``."""
    for child in sorted(root.iterdir()):
        if child.is_dir() and any(child.glob("*_labels_metadata.json")):
            return "bigearthnet"
    return "folders"


def fingerprint(root: Path) -> str:
    """A hash of every file's relative path, size and modification time under ``root`` (cheap: stat only)."""
    digest = hashlib.sha1()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folders(root: Path, classes: list[str] | None) -> tuple[list[Path], list[str], np.ndarray, np.ndarray | None]:
    """Files, class names, labels and given split (or None) of a folder-per-class layout."""
    splits = [p for p in _class_folders(root) if p.name in SPLIT_FOLDERS]
    parts = [(p, SPLIT_FOLDERS[p.name]) for p in splits] if splits else [(root, -1)]
    if splits and not any(SPLIT_FOLDERS[p.name] == 0 for p in splits):
        raise PatchDataError(f"{root}: split folders {[p.name for p in splits]} but no train/")
    found = sorted({c.name for part, _ in parts for c in _class_folders(part)})
    if not found:
        raise PatchDataError(f"{root}: no class folders (expected <root>/<class>/<patch>.tif|png|jpg)")
    names = list(classes) if classes else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise PatchDataError(f"{root}: class folders {unknown} are not among classes {names}")
    files, labels, split = [], [], []
    for part, split_index in parts:
        for folder in _class_folders(part):
            images = _images_in(folder)
            if not images:
                raise PatchDataError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += images
            labels += [names.index(folder.name)] * len(images)
            split += [split_index] * len(images)
    label_array = np.asarray(labels, dtype=np.int64)
    present = set(label_array[np.asarray(split) <= 0].tolist())
    missing = [n for i, n in enumerate(names) if i not in present]
    if missing:
        raise PatchDataError(f"{root}: classes {missing} have no training patches")
    return files, names, label_array, (np.asarray(split, dtype=np.int8) if splits else None)


def scan_bigearthnet(root: Path, classes: list[str] | None) -> tuple[list[Path], list[str], np.ndarray]:
    """Patch folders, class names and multi-hot labels of a BigEarthNet layout."""
    folders = [p for p in _class_folders(root) if (p / f"{p.name}_labels_metadata.json").is_file()]
    if not folders:
        raise PatchDataError(f"{root}: no BigEarthNet patch folders (<patch>/<patch>_labels_metadata.json)")
    per_patch = []
    for folder in folders:
        meta = folder / f"{folder.name}_labels_metadata.json"
        try:
            labels = json.loads(meta.read_text())["labels"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PatchDataError(f"{meta}: unreadable labels ({type(exc).__name__}: {exc})") from None
        if not isinstance(labels, list) or not labels:
            raise PatchDataError(f"{meta}: 'labels' must be a non-empty list of class names")
        per_patch.append(labels)
    names = list(classes) if classes else sorted({label for labels in per_patch for label in labels})
    multi_hot = np.zeros((len(folders), len(names)), dtype=np.uint8)
    for i, labels in enumerate(per_patch):
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise PatchDataError(f"{folders[i]}: labels {unknown} are not among classes {names}")
        multi_hot[i, [names.index(label) for label in labels]] = 1
    return folders, names, multi_hot


def band_names(descriptions: tuple[str | None, ...], suffix: str) -> list[str]:
    """Band names of a patch file: its band descriptions, ``red green blue`` for a 3-band PNG / JPEG, else
    ``band1`` …"""
    if all(descriptions):
        return list(descriptions)
    if suffix.lower() in (".png", ".jpg", ".jpeg") and len(descriptions) == 3:
        return list(RGB_NAMES)
    return [f"band{i + 1}" for i in range(len(descriptions))]


def read_patch(path: Path) -> tuple[np.ndarray, list[str]]:
    """A patch file's pixels (bands × H × W) and band names."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning  # PNG / JPEG patches carry no georeferencing

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.read(), band_names(src.descriptions, path.suffix)
    except rasterio.RasterioIOError as exc:
        raise PatchDataError(f"patch {path} is not a readable image (corrupt or truncated?): {exc}") from None


def read_bigearthnet(folder: Path, bands: list[str]) -> np.ndarray:
    """The ``bands`` of a BigEarthNet patch folder on the grid of the finest of them (bilinear), uint16."""
    import rasterio
    from rasterio.enums import Resampling

    files = {band: folder / f"{folder.name}_{band}.tif" for band in bands}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise PatchDataError(f"BigEarthNet patch {folder} lacks {', '.join(missing)}")
    try:
        sources = [rasterio.open(p) for p in files.values()]
    except rasterio.RasterioIOError as exc:
        raise PatchDataError(f"BigEarthNet patch {folder}: a band is not a readable GeoTIFF: {exc}") from None
    try:
        finest = min(sources, key=lambda s: abs(s.transform.a))
        shape = (finest.height, finest.width)
        if any(s.bounds != finest.bounds for s in sources):
            raise PatchDataError(f"BigEarthNet patch {folder}: its bands cover different areas")
        return np.stack([s.read(1, out_shape=shape, resampling=Resampling.bilinear) for s in sources])
    finally:
        for s in sources:
            s.close()


# -- the cache --------------------------------------------------------------------------------------------------


def cache_key(root: Path, layout: str, bands: list[str] | None, classes: list[str] | None) -> str:
    """What a cache file is a cache of: the folder and the choices that change its content."""
    text = json.dumps([CACHE_VERSION, str(root.resolve()), layout, bands, classes])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_patch_set(
    root: Path,
    cache_dir: Path,
    *,
    layout: Layout = "auto",
    bands: list[str] | None = None,
    classes: list[str] | None = None,
    report: Callable[..., Any] | None = None,
) -> PatchSet:
    """Scan ``root`` (or reuse its cache when the folder has not changed) and memory-map its patches.

    Args:
        root: the patch folder.
        cache_dir: where ``patches-<key>.npy`` / ``.json`` live.
        layout: ``folders``, ``bigearthnet`` or ``auto`` (:func:`find_layout`).
        bands: band names to keep, in this order (default: every band of the patches).
        classes: class names in label order (default: the folder names / labels found, sorted).
        report: called as ``report("preparing data", done=…, total=…, unit="patches")`` while scanning.

    Raises:
        PatchDataError: a missing folder, a class folder without images, an unreadable patch, patches of
            different band counts or sizes, a band asked for that a patch lacks.
    """
    root = Path(root)
    if not root.is_dir():
        raise PatchDataError(f"patch folder {root} does not exist")
    layout = find_layout(root) if layout == "auto" else layout
    key = cache_key(root, layout, bands, classes)
    array_path, meta_path = Path(cache_dir) / f"patches-{key}.npy", Path(cache_dir) / f"patches-{key}.json"
    stamp = fingerprint(root)
    meta = _read_meta(meta_path)
    if meta is None or meta.get("fingerprint") != stamp or not array_path.is_file():
        meta = _build_cache(root, layout, bands, classes, array_path, report)
        meta["fingerprint"] = stamp
        part = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.part")
        part.write_text(json.dumps(meta))
        part.replace(meta_path)
    labels = np.asarray(meta["labels"], dtype=np.uint8 if meta["multilabel"] else np.int64)
    given = meta.get("split")
    return PatchSet(
        root=root,
        images=np.load(array_path, mmap_mode="r"),
        labels=labels,
        classes=meta["classes"],
        bands=meta["bands"],
        paths=meta["paths"],
        multilabel=meta["multilabel"],
        given_split=np.asarray(given, dtype=np.int8) if given is not None else None,
        cache=array_path,
    )


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _build_cache(
    root: Path, layout: str, bands: list[str] | None, classes: list[str] | None, out: Path, report: Callable | None
) -> dict[str, Any]:
    if layout == "bigearthnet":
        files, names, labels = scan_bigearthnet(root, classes)
        given: np.ndarray | None = None
        chosen = list(bands or BIGEARTHNET_BANDS)
        unknown = [b for b in chosen if b not in BIGEARTHNET_BANDS]
        if unknown:
            raise PatchDataError(f"{root}: BigEarthNet has no bands {unknown} (it has {' '.join(BIGEARTHNET_BANDS)})")

        def read(path: Path) -> np.ndarray:
            return read_bigearthnet(path, chosen)
    else:
        files, names, labels, given = scan_folders(root, classes)
        _, first_bands = read_patch(files[0])
        missing = [b for b in (bands or []) if b not in first_bands]
        if missing:
            raise PatchDataError(f"patch {files[0]} lacks bands {missing} (it has {' '.join(first_bands)})")
        chosen = list(bands or first_bands)
        picks = [first_bands.index(b) for b in chosen]

        def read(path: Path) -> np.ndarray:
            data, names_here = read_patch(path)
            if len(names_here) != len(first_bands):
                raise PatchDataError(
                    f"patch {path} has {len(names_here)} bands, {files[0]} has {len(first_bands)}: "
                    "every patch of a set needs the same bands"
                )
            if names_here != first_bands:
                return data[[names_here.index(b) for b in chosen]] if set(chosen) <= set(names_here) else data[picks]
            return data[picks]

    first_image = read(files[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f"{out.stem}.{os.getpid()}.part.npy")
    images = np.lib.format.open_memmap(part, mode="w+", dtype=first_image.dtype, shape=(len(files), *first_image.shape))
    try:
        for i, path in enumerate(files):
            image = first_image if i == 0 else read(path)
            if image.shape != first_image.shape:
                size, first_size = "×".join(map(str, image.shape[1:])), "×".join(map(str, first_image.shape[1:]))
                raise PatchDataError(
                    f"patch {path} is {size} pixels, {files[0]} is {first_size}: resize them to one size"
                )
            images[i] = image
            if report is not None and (i % 256 == 0 or i + 1 == len(files)):
                report("preparing data", done=i + 1, total=len(files), unit="patches")
        images.flush()
        del images
        part.replace(out)
    finally:
        part.unlink(missing_ok=True)
    return {
        "version": CACHE_VERSION,
        "layout": layout,
        "paths": [str(p.relative_to(root)) for p in files],
        "labels": labels.tolist(),
        "classes": names,
        "bands": chosen,
        "multilabel": layout == "bigearthnet",
        "split": given.tolist() if given is not None else None,
    }
