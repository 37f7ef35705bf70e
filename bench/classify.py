"""Classification training input: patches per second from the patch cache vs a plain per-file loader.

Usage::

    python bench/classify.py [--scene <SAFE folder>] [--epochs 3] [--batch 32] [--steps 20]

The patch set is the T29UNU SCL set in ``data/patches/t29unu-scl`` (257 patches of 16 × 16 at 60 m, 11 bands),
or, with ``--scene``, every patch of that product cut the same way (``torchbearer.ml.scl_patches``, no cap per
class) into a temporary folder.

- cache: the classify kind's loader: the folder scanned once into one memory-mapped array (scan timed apart),
  batches sliced out of it (``PatchDataModule``), no workers.
- per file: an ``ImageFolder``-style dataset opening each patch GeoTIFF with rasterio in ``__getitem__``,
  default collation, shuffled, no workers.
Both at the same batch size, through the same transforms (standardised, then the kornia augmentation of the
job: flips, 90° rotations, brightness / contrast). Wall and CPU (process) time over ``--epochs`` epochs.
- data-wait share: ``--steps`` training steps of resnet18 on the cache loader, the time spent waiting for the
  next batch over the whole step time (what the job's progress callback reports).

Prints the figures and, last, one JSON line: ``{"cache_vs_per_file", "data_wait_share", …}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torchbearer.ml.classification import AugmentOptions, PatchDataModule  # noqa: E402
from torchbearer.ml.patches import load_patch_set  # noqa: E402

PATCHES = REPO / "data" / "patches" / "t29unu-scl"


class PerFilePatches(Dataset):
    """``ImageFolder`` for GeoTIFF patches: one file opened and read per sample."""

    def __init__(self, root: Path, paths: list[str], labels: np.ndarray) -> None:
        self.files = [root / p for p in paths]
        self.labels = labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        with rasterio.open(self.files[index]) as src:
            image = torch.from_numpy(src.read().astype(np.float32))
        return {"image": image, "label": torch.tensor(self.labels[index])}


def timed_epochs(loader: DataLoader, transform, epochs: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and patches for ``epochs`` passes of ``loader`` through ``transform``."""
    wall, cpu, count = time.perf_counter(), time.process_time(), 0
    for _ in range(epochs):
        for batch in loader:
            transform(batch["image"])
            count += len(batch["image"])
    return time.perf_counter() - wall, time.process_time() - cpu, count


def data_wait_share(loader: DataLoader, transform, steps: int, in_channels: int, classes: int) -> float:
    """Share of ``steps`` resnet18 training steps spent waiting for batches."""
    import timm

    model = timm.create_model("resnet18", in_chans=in_channels, num_classes=classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wait = busy = 0.0
    done = 0
    while done < steps:
        batches = iter(loader)
        while done < steps:
            start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            ready = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(transform(batch["image"])), batch["label"].long())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            end = time.perf_counter()
            if done:  # the first batch of a run includes start-up
                wait += ready - start
                busy += end - ready
            done += 1
    return wait / (wait + busy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", type=Path, help="an L2A SAFE folder to cut a larger patch set from")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = PATCHES
        if args.scene is not None:
            from torchbearer.ml.scl_patches import make_patches

            root = Path(tmp) / "patches"
            print("cut", make_patches(args.scene, root, per_class=None), flush=True)
        start = time.perf_counter()
        patch_set = load_patch_set(root, Path(tmp) / "cache")
        scan_s = time.perf_counter() - start
        split = patch_set.split(0.0, 0.0, seed=0)
        mean, std = patch_set.band_stats(split["train"])
        mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1).float(), torch.tensor(std).view(1, -1, 1, 1).float()
        augment = AugmentOptions(brightness=0.1, contrast=0.1).build(patch_set.images.shape[-1])

        def transform(image: torch.Tensor) -> torch.Tensor:
            return augment((image - mean_t) / std_t)

        torch.manual_seed(0)
        cached = PatchDataModule(patch_set, split, args.batch).train_dataloader()
        per_file = DataLoader(PerFilePatches(root, patch_set.paths, patch_set.labels), batch_size=args.batch,
                              shuffle=True, drop_last=True)  # fmt: skip
        print(f"{len(patch_set)} patches {patch_set.images.shape[1:]}, batch {args.batch}, {args.epochs} epochs; "
              f"scan into the cache {scan_s:.2f} s; {torch.get_num_threads()} torch threads", flush=True)  # fmt: skip
        cache_wall, cache_cpu, n = timed_epochs(cached, transform, args.epochs)
        file_wall, file_cpu, m = timed_epochs(per_file, transform, args.epochs)
        assert n == m
        figures = {
            "cache_patches_per_s": round(n / cache_wall, 1),
            "per_file_patches_per_s": round(m / file_wall, 1),
            "cache_vs_per_file": round(file_wall / cache_wall, 2),
            "cache_vs_per_file_cpu": round(file_cpu / cache_cpu, 2),
        }
        print(f"cache:    {figures['cache_patches_per_s']} patches/s ({cache_cpu:.2f} s CPU)")
        print(f"per file: {figures['per_file_patches_per_s']} patches/s ({file_cpu:.2f} s CPU)")
        print(f"cache / per file: {figures['cache_vs_per_file']}× wall, {figures['cache_vs_per_file_cpu']}× CPU")
        share = data_wait_share(cached, transform, args.steps, len(patch_set.bands), len(patch_set.classes))
        figures["data_wait_share"] = round(share, 4)
        print(f"data wait: {share:.1%} of a resnet18 training step ({args.steps} steps)")
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
