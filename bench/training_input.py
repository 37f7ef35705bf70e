"""Training input: 256 × 256 patches with their masks per second, torchbearer's DataLoader vs TorchGeo's.

Usage::

    python bench/training_input.py [--scene <SAFE folder>] [--patches 320] [--patch 256] [--steps 12] [--input-only]

The scene (figures in docs/benchmarks.md are for the full T29UNU product of the shared fixtures; the sample
crop in ``data/``, the default, is too small for 256² patches: use ``--patch 64``) is used at 60 m (11 bands),
with a cloud / clear mask made from its SCL band.

- torchbearer: the scene stacked once into the cache (timed apart), read into memory, and the training
  DataLoader of the train kind (random patches in training blocks, normalised, flipped/rotated, no workers).
- TorchGeo: its ``Sentinel2`` dataset reading the same JP2 bands (every band pinned to the R60m files: 0.8.1
  builds file names from each band's native resolution) intersected with a mask ``RasterDataset``, a
  ``RandomGeoSampler`` and ``stack_samples``, no workers, first epoch (JPEG 2000 decoded per patch).
- data-wait share: a few training steps of the sample model (FCN) on the torchbearer DataLoader, measured by
  the train kind's progress callback (time between steps over step time).

- rss_growth_scenes: in a fresh process per size, peak resident memory (``VmHWM``, reset after the model is
  built) above the model while a training input epoch runs (scenes opened, split, statistics, ``--patches``
  patches through the training DataLoader), with 8 scenes (the scene and 7 shifted repetitions of it,
  ``data/make_repetitions.py``) ÷ with the scene alone.

``--input-only`` stacks the scene and times torchbearer's DataLoader alone (seconds instead of minutes: for
A/B runs of the input path; last line ``{"patches_per_s", "patches_per_cpu_s"}``).

Both input speeds are measured in wall time and in the process's CPU time (``time.process_time``: on a
shared, loaded machine the CPU-time ratio is the steadier one). Prints the figures and, last, one JSON line:
``{"patches_per_s", "cache_vs_torchgeo", "cache_vs_torchgeo_cpu", "data_wait_share", "rss_growth_scenes"}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torchbearer.imagery.cache import build_stack  # noqa: E402
from torchbearer.imagery.safe import read_safe  # noqa: E402

SAMPLE = REPO / "data" / "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
CLASSES = ["clear", "cloud"]
BATCH = 16


def cloud_mask(safe: Path, out: Path) -> Path:
    """Cloud (SCL 8, 9, 10) = 1, clear = 0, no data (SCL 0) = 255, on the 60 m grid."""
    with rasterio.open(read_safe(safe).band_file("SCL", 60)) as src:
        scl, profile = src.read(1), src.profile
    mask = np.isin(scl, (8, 9, 10)).astype("uint8")
    mask[scl == 0] = 255
    profile.update(driver="GTiff", dtype="uint8", nodata=255, compress="deflate", tiled=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(mask, 1)
    return out


def torchbearer_loader(stack: Path, mask: Path, patches: int, patch: int):
    from torchbearer.ml.datamodules import SegmentationDataModule
    from torchbearer.ml.scenes import SplitOptions, load_scenes

    start = time.perf_counter()
    scenes = load_scenes([stack], [mask], CLASSES, work_dir=stack.parent / "targets")
    dm = SegmentationDataModule(scenes, patch_size=patch, batch_size=BATCH, split=SplitOptions(patch),
                                samples_per_epoch=patches)  # fmt: skip
    dm.setup()
    return dm, time.perf_counter() - start


def time_torchbearer(dm, patches: int) -> tuple[float, float]:
    """(patches per second of wall time, per second of this process's CPU time)."""
    start, cpu = time.perf_counter(), time.process_time()
    seen = 0
    for batch in dm.train_dataloader():
        seen += len(batch["image"])
    assert seen == patches and batch["image"].dtype.is_floating_point
    return seen / (time.perf_counter() - start), seen / (time.process_time() - cpu)


def time_torchgeo(safe: Path, mask: Path, patches: int, patch: int) -> tuple[float, float]:
    """(patches per second of wall time, per second of this process's CPU time, GDAL's threads included)."""
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, Sentinel2, stack_samples
    from torchgeo.samplers import RandomGeoSampler

    from torchbearer.imagery.spec import BANDS_BY_RESOLUTION

    class Sentinel2At60m(Sentinel2):
        # TorchGeo 0.8.1 names each band's file after its native resolution (R10m/…_B02_10m.jp2):
        # pin every band to the R60m files.
        resolutions = dict.fromkeys(Sentinel2.all_bands, "60m")

    class Mask(RasterDataset):
        filename_glob = mask.name
        is_image = False

    start = time.perf_counter()
    images = Sentinel2At60m(paths=[str(safe)], res=60, bands=list(BANDS_BY_RESOLUTION[60]))
    dataset = images & Mask(paths=[str(mask.parent)])
    sampler = RandomGeoSampler(dataset, size=patch, length=patches)
    loader = DataLoader(dataset, sampler=sampler, batch_size=BATCH, collate_fn=stack_samples)
    seen = 0
    first, cpu = time.perf_counter(), time.process_time()
    for batch in loader:
        seen += len(batch["image"])
    assert batch["image"].shape[1:] == (11, patch, patch) and "mask" in batch
    print(f"torchgeo: index built in {first - start:.2f} s", file=sys.stderr)
    return seen / (time.perf_counter() - first), seen / (time.process_time() - cpu)


def data_wait_share(dm, steps: int) -> float:
    """Share of training-step time spent waiting for data, training FCN (the sample model) for ``steps``."""
    import lightning as L

    from torchbearer.ml.callbacks import ProgressReporter
    from torchbearer.ml.checkpoint import ModelCard
    from torchbearer.ml.tasks import SegmentationTask

    card = ModelCard("fcn", None, len(dm.bands), 2, CLASSES, "binary", dm.bands, 60.0,
                     {"mean": dm.mean, "std": dm.std})  # fmt: skip
    shares: list[float] = []

    def metrics(values: dict, **_: object) -> None:
        if "data_wait_share" in values:
            shares.append(values["data_wait_share"])

    reporter = ProgressReporter(lambda *a, **k: None, metrics, interval_s=0.0)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[reporter], accelerator="auto", devices=1)  # fmt: skip
    trainer.fit(SegmentationTask(card.to_dict()), datamodule=dm)
    return float(np.mean(shares[1:])) if len(shares) > 1 else float("nan")


def peak_rss() -> int:
    """Peak resident set (bytes) since the last reset (Linux ``VmHWM``; not ``getrusage``, which survives exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_child(folder: Path, count: int, patches: int, patch: int) -> None:
    """Runs in its own process: peak RSS above the model through a training input epoch on ``count`` scenes."""
    import psutil

    from torchbearer.ml.checkpoint import ModelCard
    from torchbearer.ml.datamodules import SegmentationDataModule
    from torchbearer.ml.scenes import SplitOptions, load_scenes
    from torchbearer.ml.tasks import SegmentationTask

    names = [f"rep_{i}.tif" for i in range(count)]
    card = ModelCard("fcn", None, 11, 2, CLASSES, "binary", ["B01"] * 11, 60.0, {"mean": [0] * 11, "std": [1] * 11})
    model = SegmentationTask(card.to_dict())
    base = psutil.Process().memory_info().rss
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
    scenes = load_scenes([folder / "scenes" / n for n in names], [folder / "masks" / n for n in names], CLASSES,
                         cache_dir=folder / "mapped", work_dir=folder / f"targets_{count}")  # fmt: skip
    dm = SegmentationDataModule(scenes, patch_size=patch, batch_size=BATCH, split=SplitOptions(patch),
                                samples_per_epoch=patches)  # fmt: skip
    dm.setup()
    seen = sum(len(b["image"]) for b in dm.train_dataloader())
    assert seen == patches and model is not None
    print(json.dumps({"base": base, "peak": peak_rss()}))


def rss_growth_scenes(stack: Path, mask: Path, work: Path, patches: int, patch: int) -> tuple[float, dict]:
    """8 scenes ÷ 1 scene: peak RSS above the model, each in a fresh process."""
    spec = importlib.util.spec_from_file_location("make_repetitions", REPO / "data" / "make_repetitions.py")
    repetitions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repetitions)
    repetitions.repeat_scene(stack, mask, work / "reps", 8)
    growth = {}
    for count in (1, 8):
        command = [sys.executable, __file__, "--rss-child", str(work / "reps"), "--count", str(count),
                   "--patches", str(patches), "--patch", str(patch)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        growth[count] = figures["peak"] - figures["base"]
    return growth[8] / growth[1], growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, default=SAMPLE, help="an L2A SAFE folder with R60m bands")
    parser.add_argument("--patches", type=int, default=320, help="patches each pipeline delivers")
    parser.add_argument("--patch", type=int, default=256, help="patch edge, pixels (64 for the small sample)")
    parser.add_argument("--steps", type=int, default=12, help="training steps for the data-wait share")
    parser.add_argument(
        "--input-only",
        action="store_true",
        help="time torchbearer's DataLoader alone (no TorchGeo, training steps or memory runs)",
    )
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.count, args.patches, args.patch)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "masks").mkdir()
        mask = cloud_mask(args.scene, work / "masks" / "cloud.tif")
        start = time.perf_counter()
        stack = build_stack(args.scene, 60, work / "cache")
        stack_s = time.perf_counter() - start
        dm, load_s = torchbearer_loader(stack, mask, args.patches, args.patch)
        # Both pipelines on one thread, as a DataLoader worker runs (GDAL decodes JP2 on one thread too).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        ours, ours_cpu = time_torchbearer(dm, args.patches)
        if args.input_only:
            print(f"torchbearer DataLoader: {ours:.0f} patches/s, {ours_cpu:.0f} per CPU second (load {load_s:.2f} s)")
            print(json.dumps({"patches_per_s": round(ours, 1), "patches_per_cpu_s": round(ours_cpu, 1)}))
            return
        theirs, theirs_cpu = time_torchgeo(args.scene, mask, args.patches, args.patch)
        torch.set_num_threads(threads)
        wait = data_wait_share(dm, args.steps)
        growth, rss = rss_growth_scenes(stack, mask, work, args.patches, args.patch)
    print(f"scene {args.scene.name}: stacked once in {stack_s:.2f} s, read with its mask in {load_s:.2f} s")
    print(f"torchbearer DataLoader: {ours:.0f} patches/s, {ours_cpu:.0f} per CPU second ({args.patch}², {BATCH} "
          "a batch, normalised, augmented)")  # fmt: skip
    print(f"TorchGeo Sentinel2 ∩ mask + RandomGeoSampler (JP2, first epoch): {theirs:.1f} patches/s, "
          f"{theirs_cpu:.1f} per CPU second")  # fmt: skip
    print(f"cache vs TorchGeo: {ours / theirs:.1f}× wall time, {ours_cpu / theirs_cpu:.1f}× CPU time; "
          f"data-wait share of an FCN step: {wait:.3f}")  # fmt: skip
    print(
        f"peak RSS above the model through a training input epoch: 1 scene {rss[1] / 2**20:.0f} MB, "
        f"8 scenes {rss[8] / 2**20:.0f} MB: rss_growth_scenes {growth:.2f}"
    )
    print(json.dumps({"patches_per_s": round(ours, 1), "cache_vs_torchgeo": round(ours / theirs, 1),
                      "cache_vs_torchgeo_cpu": round(ours_cpu / theirs_cpu, 1), "data_wait_share": round(wait, 4),
                      "rss_growth_scenes": round(growth, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
