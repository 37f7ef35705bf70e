"""The Lightning DataModules of segmentation training: :class:`PatchDataModule` (what they share) and
:class:`SegmentationDataModule`, patches of scenes in memory (``ml/scenes.py``); chip folders are read by
``ml/chips.py::ChipDataModule`` into the same batches.

Batches leave the DataLoader normalised and augmented: the collate function copies each patch once into the
batch through its flip/rotation view, turning DN into reflectance with the scene's offset and standardising it
with the per-band statistics of the training blocks in the same pass, no-data pixels zeroed. Random training
patches are drawn by a sampler in the main process, from the seed and the epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from torchbearer.ml.checkpoint import standardising_terms
from torchbearer.ml.scenes import (
    TRAIN,
    Scene,
    Split,
    SplitOptions,
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

    def __init__(self, scenes: list[Scene], patch_size: int, origins: list[tuple[int, int, int]] | None = None):
        self.scenes = scenes
        self.size = patch_size
        self.origins = origins or []

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, item: int | tuple[int, int, int, int]) -> Item:
        scene, r, c, aug = item if isinstance(item, tuple) else (*self.origins[item], 0)
        s = self.scenes[scene]
        window = (slice(r, r + self.size), slice(c, c + self.size))
        return scene, s.dn[(slice(None), *window)], s.target[window], s.nodata[window], aug


class RandomPatchSampler(Sampler):
    """``samples`` random (scene, row, column, augmentation) picks an epoch from the training origins.

    Drawn in the main process from ``seed`` and the epoch (Lightning calls :meth:`set_epoch`), so runs repeat
    and DataLoader workers never share a random state.
    """

    def __init__(self, origins: list[tuple[int, int, int]], samples: int, seed: int, augment: bool) -> None:
        self.origins = np.asarray(origins, dtype=np.int64)
        self.samples = samples
        self.seed = seed
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        picks = self.origins[rng.integers(0, len(self.origins), self.samples)]
        augs = rng.integers(0, 8, self.samples) if self.augment else np.zeros(self.samples, np.int64)
        for (scene, r, c), aug in zip(picks.tolist(), augs.tolist(), strict=True):
            yield scene, r, c, aug


class Collate:
    """Batch patches into ``image`` (normalised float32 B × bands × H × W) and ``mask`` (uint8 B × H × W).

    Per source (a scene, or a chip), reflectance = value × scale + shift (``reflectance_terms``, by the item's
    source index); standardised with the band statistics; no-data pixels → 0.
    Augmentation code a: bit 0 flips left-right, bit 1 flips up-down, bit 2 transposes (the 8 symmetries).
    """

    def __init__(self, reflectance_terms: list[tuple[float, float]], mean: list[float], std: list[float]) -> None:
        # One multiply-add a pixel: ((DN × scale + shift) - mean) / std = DN × a + b; one pair per source.
        self.terms = [standardising_terms(terms, mean, std) for terms in reflectance_terms]

    def __call__(self, items: list[Item]) -> dict[str, torch.Tensor]:
        bands, rows, cols = items[0][1].shape
        image = np.empty((len(items), bands, rows, cols), np.float32)
        target = np.empty((len(items), rows, cols), np.uint8)
        for b, (scene, patch, mask, nodata, aug) in enumerate(items):
            multiplier, offset = self.terms[scene]
            valid = ~_augment(nodata, aug) if nodata.any() else None
            patch = _augment(patch, aug)  # flips and transposes are views: one copy, into the batch
            for k in range(bands):  # band by band, so each plane is converted and scaled while in cache
                plane = image[b, k]
                plane[...] = patch[k]
                plane *= multiplier[k]
                plane += offset[k]
                if valid is not None:
                    plane *= valid
            target[b] = _augment(mask, aug)
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(target)}


def _augment(x: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 symmetries of a square on the last two axes, as a view."""
    if code & 1:
        x = x[..., ::-1]
    if code & 2:
        x = x[..., ::-1, :]
    if code & 4:
        x = x.swapaxes(-1, -2)
    return x


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

    def dataset(self, origins: list[tuple[int, int, int]]) -> Dataset:
        raise NotImplementedError

    def _loader(self, origins: list[tuple[int, int, int]], sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            self.dataset(origins),
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=Collate(self.reflectance_terms, self.mean, self.std),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            multiprocessing_context="fork" if self.num_workers > 0 and os.name == "posix" else None,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.split is not None, "call setup() first"
        sampler = RandomPatchSampler(self.split.train, self.train_samples, self.seed, self.augment)
        return self._loader(self.split.train, sampler)

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
        num_workers: DataLoader worker processes (forked: they share the scenes' memory).
        classes: class names, for messages (default: their indices).
    """

    def __init__(
        self,
        scenes: list[Scene],
        *,
        classes: list[str] | None = None,
        patch_size: int = 256,
        batch_size: int = 16,
        split: SplitOptions | None = None,
        samples_per_epoch: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__(
            patch_size=patch_size, batch_size=batch_size, num_workers=num_workers, seed=seed, augment=augment
        )
        self.scenes = scenes
        self.bands = list(scenes[0].info.bands)
        self.split_options = split or SplitOptions(block_size=2 * patch_size)
        self.samples_per_epoch = samples_per_epoch
        self.classes = classes

    def setup(self, stage: str | None = None) -> None:
        """Split, compute and check the statistics and the training classes (once)."""
        if self.split is not None:
            return
        self.split = make_split(self.scenes, self.patch_size, self.split_options, self.seed)
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
        area = sum(int((part == TRAIN).sum()) for part in self.split.parts)
        return max(self.batch_size, area // self.patch_size**2)

    @property
    def reflectance_terms(self) -> list[tuple[float, float]]:
        return [s.info.reflectance_terms for s in self.scenes]

    def dataset(self, origins: list[tuple[int, int, int]]) -> Dataset:
        return PatchDataset(self.scenes, self.patch_size, origins)
