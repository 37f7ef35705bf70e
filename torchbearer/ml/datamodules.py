"""The Lightning DataModules of segmentation training: :class:`PatchDataModule` (what they share) and
:class:`SegmentationDataModule`, patches of memory-mapped scenes (``ml/scenes.py``, ``ml/mapped.py``); chip
folders are read by ``ml/chips.py::ChipDataModule`` into the same batches.

Batches leave the DataLoader normalised and augmented: the collate function copies each patch into the batch
through its flip/rotation view (transposed ones through a small staging buffer), turning DN into reflectance
with the scene's offset and standardising it with the per-band statistics of the training blocks in the same
pass, no-data pixels zeroed. Random training patches are drawn by a sampler in the main process, from the seed
and the epoch.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from torchbearer.ml.checkpoint import standardising_terms
from torchbearer.ml.mapped import MAPPED_BUDGET, PageBudget
from torchbearer.ml.scenes import (
    Split,
    SplitOptions,
    TrainingScene,
    band_stats,
    check_classes,
    check_inputs,
    make_split,
    train_class_counts,
)

log = logging.getLogger(__name__)


# -- datasets, sampler, collate ----------------------------------------------------------------------------------


#: A patch as the dataset gives it: scene index, DN, target, no-data mask, augmentation code.
Item = tuple[int, np.ndarray, np.ndarray, np.ndarray, int]


class PatchDataset(Dataset):
    """Patches at given origins: each item is (scene index, DN, target, no-data mask, augmentation code)."""

    def __init__(self, scenes: list[TrainingScene], patch_size: int, origins: np.ndarray | None = None):
        self.scenes = scenes
        self.size = patch_size
        self.origins = np.zeros((0, 3), np.int64) if origins is None else origins

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, item: int | tuple[int, int, int, int]) -> Item:
        scene, r, c, aug = item if isinstance(item, tuple) else (*self.origins[item], 0)
        return scene, *self.scenes[scene].patch(r, c, self.size), aug


class RandomPatchSampler(Sampler):
    """``samples`` random (scene, row, column, augmentation) picks an epoch from the training origins.

    A scene is drawn in proportion to ``scene_weights`` (its labelled training pixels), then an origin in it
    uniformly; given ``rare`` (per origin: its patch holds a rare class) and ``rare_share``, that share of the
    picks (rounded up) is drawn from the rare origins instead. Drawn in the main process from ``seed`` and
    the epoch (Lightning calls :meth:`set_epoch`), so runs repeat and DataLoader workers never share a random
    state.
    """

    def __init__(
        self,
        origins: np.ndarray,
        samples: int,
        seed: int,
        augment: bool,
        scene_weights: list[int] | None = None,
        rare: np.ndarray | None = None,
        rare_share: float = 0.0,
    ) -> None:
        self.origins = np.asarray(origins, dtype=np.int64).reshape(-1, 3)
        self.samples = samples
        self.seed = seed
        self.augment = augment
        self.epoch = 0
        scenes = int(self.origins[:, 0].max()) + 1 if len(self.origins) else 0
        per_scene = np.bincount(self.origins[:, 0], minlength=scenes)
        weights = np.asarray(scene_weights if scene_weights is not None else per_scene, np.float64)[:scenes]
        weights = np.where(per_scene > 0, weights, 0.0)
        self.scene_p = weights / weights.sum() if weights.sum() > 0 else per_scene / max(1, per_scene.sum())
        self.starts = np.concatenate([[0], np.cumsum(per_scene)[:-1]])
        self.per_scene = per_scene
        self.rare = np.flatnonzero(rare) if rare is not None else np.zeros(0, np.int64)
        self.rare_share = rare_share if len(self.rare) else 0.0
        if not (np.diff(self.origins[:, 0]) >= 0).all():
            raise ValueError("training origins must be grouped by scene")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        n_rare = min(self.samples, math.ceil(self.rare_share * self.samples - 1e-9))
        scenes = rng.choice(len(self.scene_p), self.samples - n_rare, p=self.scene_p)
        index = self.starts[scenes] + (rng.random(len(scenes)) * self.per_scene[scenes]).astype(np.int64)
        index = np.concatenate([index, self.rare[rng.integers(0, len(self.rare), n_rare)]]) if n_rare else index
        picks = self.origins[rng.permutation(index)]
        augs = rng.integers(0, 8, self.samples) if self.augment else np.zeros(self.samples, np.int64)
        for (scene, r, c), aug in zip(picks.tolist(), augs.tolist(), strict=True):
            yield scene, r, c, aug


#: Extra values at the end of each row of the collate's staging buffer: a transposed read from a buffer whose
#: rows are a power of two bytes apart (a 256-pixel patch: 512 bytes) lands every value of a column in the same
#: few CPU cache sets, evicting itself (measured: 118 µs a 256² uint16 plane against 48 µs with a padded pitch).
STAGE_PAD = 16


class Collate:
    """Batch patches into ``image`` (normalised float32 B × bands × H × W), ``mask`` (uint8 B × H × W) and
    ``scene`` (int64 B, the source of each patch).

    Per source (a scene, or a chip), reflectance = value × scale + shift (``reflectance_terms``, by the item's
    source index); standardised with the band statistics; no-data pixels → 0.
    Augmentation code a: bit 0 flips left-right, bit 1 flips up-down, bit 2 transposes (the 8 symmetries).
    """

    def __init__(
        self,
        reflectance_terms: list[tuple[float, float]],
        mean: list[float],
        std: list[float],
        copied: Callable[[int], None] | None = None,
    ) -> None:
        # One multiply-add a pixel: ((DN × scale + shift) - mean) / std = DN × a + b; one pair per source.
        self.terms = [standardising_terms(terms, mean, std) for terms in reflectance_terms]
        self.copied = copied  # told each source index whose patch was copied (to release mapped pages)

    def __call__(self, items: list[Item]) -> dict[str, torch.Tensor]:
        bands, rows, cols = items[0][1].shape
        image = np.empty((len(items), bands, rows, cols), np.float32)
        target = np.empty((len(items), rows, cols), np.uint8)
        valid = np.empty((rows, cols), np.float32)  # 1 where a patch has data (a float factor: no cast a band)
        stages = _Stages(rows, cols)
        for b, (scene, patch, mask, nodata, aug) in enumerate(items):
            multiplier, offset = self.terms[scene]
            masked = bool(nodata.any())
            if masked:
                _put_symmetry(valid, nodata, aug, stages)
                np.subtract(1.0, valid, out=valid)
            for k in range(bands):  # band by band, so each plane is converted and scaled while in cache
                plane = image[b, k]
                _put_symmetry(plane, patch[k], aug, stages)
                plane *= multiplier[k]
                plane += offset[k]
                if masked:
                    plane *= valid
            _put_symmetry(target[b], mask, aug, stages)
            if self.copied is not None:
                self.copied(scene)
        sources = torch.tensor([item[0] for item in items], dtype=torch.int64)  # for per-scene scores
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(target), "scene": sources}


class _Stages:
    """The collate's staging buffers, one per source dtype: ``rows`` × ``cols`` views of rows padded by
    :data:`STAGE_PAD` values."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.buffers: dict[np.dtype, np.ndarray] = {}

    def __getitem__(self, dtype: np.dtype) -> np.ndarray:
        if dtype not in self.buffers:
            self.buffers[dtype] = np.empty((self.rows, self.cols + STAGE_PAD), dtype)[:, : self.cols]
        return self.buffers[dtype]


def _put_symmetry(out: np.ndarray, x: np.ndarray, code: int, stages: _Stages) -> None:
    """``out[...] =`` the symmetry ``code`` of the 2-D window ``x`` (a view of a memory-mapped scene or a chip),
    converted to ``out``'s dtype; the window is read row by row.

    A transposed code copies the rows into a staging buffer first and transposes from there: read down the
    columns of the scene itself, every value sits on another 4 KiB page and, when the scene's rows are a power
    of two bytes apart, in the same cache set. Its left-right flip is written as an up-down flip of ``out``
    (transpose ∘ left-right = up-down ∘ transpose), so no row is read backwards."""
    if code & 2:
        x = x[::-1]
    if code & 4:
        stage = stages[x.dtype]
        stage[...] = x
        (out[::-1] if code & 1 else out)[...] = stage.T
    else:
        out[...] = x[:, ::-1] if code & 1 else x


# -- the DataModule --------------------------------------------------------------------------------------------


class PatchDataModule(L.LightningDataModule):
    """What every patch DataModule shares: the split's origins, the statistics, and the DataLoaders.

    A subclass sets :attr:`split` (with ``train`` / ``val`` / ``test`` origin lists), :attr:`bands`,
    :attr:`mean` and :attr:`std` in :meth:`setup`, and gives :meth:`dataset` (patches at origins),
    :attr:`reflectance_terms` (one pair per source index) and :attr:`train_samples`.
    """

    def __init__(self, *, patch_size: int, batch_size: int, num_workers: int, seed: int, augment: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.augment = augment
        self.split: Split | None = None
        self.bands: list[str] = []
        self.mean: list[float] = []
        self.std: list[float] = []
        #: What the raw input values are (``dn``, ``reflectance``, ``uint8``): recorded in the model card.
        self.value_domain = "dn"

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    @property
    def train_samples(self) -> int:
        raise NotImplementedError

    @property
    def reflectance_terms(self) -> list[tuple[float, float]]:
        raise NotImplementedError

    def dataset(self, origins: np.ndarray) -> Dataset:
        raise NotImplementedError

    @property
    def source_names(self) -> list[str]:
        """The name of each source index (the ``scene`` of a batch): scene or chip file names."""
        raise NotImplementedError

    def patch_copied(self, index: int) -> None:
        """Called by the collate function once the batch holds a copy of a patch of source ``index``."""

    def train_sampler(self) -> RandomPatchSampler:
        """The sampler of the training patches: uniform over the training origins."""
        assert self.split is not None, "call setup() first"
        return RandomPatchSampler(self.split.train, self.train_samples, self.seed, self.augment)

    def _loader(self, origins: np.ndarray, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            self.dataset(origins),
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=Collate(self.reflectance_terms, self.mean, self.std, self.patch_copied),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            multiprocessing_context="fork" if self.num_workers > 0 and os.name == "posix" else None,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.split is not None, "call setup() first"
        return self._loader(self.split.train, self.train_sampler())

    def val_dataloader(self) -> DataLoader:
        assert self.split is not None, "call setup() first"
        return self._loader(self.split.val)

    def test_dataloader(self) -> DataLoader:
        assert self.split is not None, "call setup() first"
        return self._loader(self.split.test)


class SegmentationDataModule(PatchDataModule):
    """Scenes in memory → train / val / test DataLoaders of normalised, augmented patches.

    Args:
        scenes: from :func:`~torchbearer.ml.scenes.load_scenes` (one resolution, the same bands).
        patch_size: patch edge, pixels; batch_size: patches a batch.
        split: the spatial split (default: blocks of twice the patch size, 20 % for validation).
        samples_per_epoch: training patches an epoch (None: the training area divided by a patch, at least
            one batch).
        num_workers: DataLoader worker processes (forked: they share the scenes' memory-mapped pages).
        classes: class names, for messages (default: their indices).
        num_classes: classes of the task (for the class counts and rare-class oversampling).
        rare_classes: class indexes whose patches ``rare_share`` of the training picks must hold.
        mapped_budget: bytes of the scenes' memory-mapped pages a process may hold before they are released
            (``ml/mapped.py``: :class:`~torchbearer.ml.mapped.PageBudget`).
    """

    def __init__(
        self,
        scenes: list[TrainingScene],
        *,
        classes: list[str] | None = None,
        patch_size: int = 256,
        batch_size: int = 16,
        split: SplitOptions | None = None,
        samples_per_epoch: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
        num_classes: int = 0,
        rare_classes: list[int] | None = None,
        rare_share: float = 0.0,
        mapped_budget: int = MAPPED_BUDGET,
    ) -> None:
        super().__init__(
            patch_size=patch_size, batch_size=batch_size, num_workers=num_workers, seed=seed, augment=augment
        )
        self.scenes = scenes
        self.bands = list(scenes[0].info.bands)
        self.split_options = split or SplitOptions(block_size=2 * patch_size)
        self.samples_per_epoch = samples_per_epoch
        self.classes = classes
        self.num_classes = num_classes
        self.rare_classes = rare_classes
        self.rare_share = rare_share
        self.mapped_budget = mapped_budget
        self._pages: PageBudget | None = None
        self._window_bytes: list[tuple[int, int]] = []

    def setup(self, stage: str | None = None) -> None:
        """Split, compute and check the statistics and the training classes (once)."""
        if self.split is not None:
            return
        self.split = make_split(self.scenes, self.patch_size, self.split_options, self.seed, self.num_classes)
        self.mean, self.std = band_stats(self.scenes, self.split)
        check_inputs(self.bands, self.mean, self.std)
        check_classes(train_class_counts(self.scenes, self.split), self.classes)
        log.info(
            "%d scenes, %d bands; patches: %d train origins, %d val, %d test",
            len(self.scenes), len(self.bands), len(self.split.train), len(self.split.val), len(self.split.test),
        )  # fmt: skip

    @property
    def train_samples(self) -> int:
        """Training patches an epoch."""
        assert self.split is not None, "call setup() first"
        if self.samples_per_epoch:
            return self.samples_per_epoch
        return max(self.batch_size, sum(self.split.train_area) // self.patch_size**2)

    @property
    def rare(self) -> list[int]:
        """The rare classes: those asked, or the rarest class of the training pixels."""
        assert self.split is not None, "call setup() first"
        if self.rare_classes is not None:
            return self.rare_classes
        counts = self.split.class_counts
        return [int(np.argmin(counts))] if counts else []

    def train_sampler(self) -> RandomPatchSampler:
        """The sampler of the training patches (scene-weighted, rare classes oversampled when asked)."""
        assert self.split is not None, "call setup() first"
        rare = None
        if self.rare_share > 0 and self.split.train_classes is not None:
            rare = self.split.train_classes[:, self.rare].any(axis=1)
        return RandomPatchSampler(self.split.train, self.train_samples, self.seed, self.augment,
                                  self.split.train_area, rare, self.rare_share)  # fmt: skip

    @property
    def source_names(self) -> list[str]:
        return [s.info.path.name for s in self.scenes]

    def patch_copied(self, index: int) -> None:
        # Per process (each forked worker has its own copy): the scenes' pages are released in bulk, by budget.
        if self._pages is None:
            self._pages = PageBudget(lambda i: self.scenes[i].release(), self.mapped_budget)
            self._window_bytes = [s.window_bytes(self.patch_size) for s in self.scenes]
        self._pages.read(index, *self._window_bytes[index])

    @property
    def reflectance_terms(self) -> list[tuple[float, float]]:
        return [s.info.reflectance_terms for s in self.scenes]

    def dataset(self, origins: np.ndarray) -> Dataset:
        return PatchDataset(self.scenes, self.patch_size, origins)
