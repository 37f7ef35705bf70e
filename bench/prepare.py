"""Data preparation benchmark: chip + flatten of a scene and of a 6 × 6 mosaic of it; chipping vs a plain loop.

    python bench/prepare.py [--scene <SAFE folder or stacked GeoTIFF>] [--size 256] [--overlap 0] [--mosaic 6]

The scene is stacked at 60 m through the project's scene path (11 bands, uint16 DN). Figures, all from this run:

- ``rss_growth_big``: peak RSS above the process's baseline while chipping then flattening a 6 × 6 mosaic of the
  scene (a VRT, 10 980² for the full tile) ÷ the same for the scene itself, each in a fresh process.
- ``chip_vs_plain``: scene Mpx/s of ``chip_scene`` ÷ those of a plain loop that, for each chip window, reads it
  with rasterio (``boundless`` for the padded edge chips) and writes it with the scene's own profile, skipping
  chips that are all no data as ``chip_scene`` does. Best of 3 alternating runs each; CPU time ratio beside it.

The last line is one JSON object of these figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import rasterio
from rasterio.windows import Window

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torchbearer.prepare.chip import chip_scene, chip_starts  # noqa: E402
from torchbearer.prepare.flatten import flatten_scene  # noqa: E402
from torchbearer.prepare.mosaic import VrtSource, write_vrt  # noqa: E402
from torchbearer.prepare.rasters import Grid, band_names, bounded_memory, scene_raster, value_tags  # noqa: E402

DEFAULT_SCENE = REPO / "data" / "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"


def mosaic_of(stack: Path, path: Path, n: int) -> Path:
    """An ``n`` × ``n`` mosaic of ``stack`` as a VRT (the mosaic step's writer), tags and band names kept."""
    with rasterio.open(stack) as src:
        grid = Grid.of(src)
        big = Grid(grid.crs, grid.transform, grid.width * n, grid.height * n)
        sources = [VrtSource(stack, grid.width, grid.height, j * grid.width, i * grid.height)
                   for i in range(n) for j in range(n)]  # fmt: skip
        return write_vrt(path, big, sources, bands=band_names(src), dtype=src.dtypes[0], nodata=src.nodata,
                         tags=value_tags(src))  # fmt: skip


def plain_chips(scene: Path, out: Path, size: int, overlap: int) -> int:
    """What a user's script does: read each chip window, write it with the scene's profile."""
    out.mkdir(parents=True)
    written = 0
    with rasterio.open(scene) as src:
        profile = src.profile.copy()
        stride = size - overlap
        for row in chip_starts(src.height, size, stride):
            for col in chip_starts(src.width, size, stride):
                window = Window(col, row, size, size)
                data = src.read(window=window, boundless=True, fill_value=0)
                if not (data != 0).all(axis=0).any():
                    continue
                profile.update(width=size, height=size, transform=src.window_transform(window))
                with rasterio.open(out / f"train_{written}.tif", "w", **profile) as dst:
                    dst.write(data)
                written += 1
    return written


def timed(function, *args, **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, threads included)."""
    cpu, wall = time.process_time(), time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


def chip_speed(stack: Path, tmp: Path, size: int, overlap: int, repeats: int = 3) -> dict:
    ours, plain = [], []
    for i in range(repeats):  # alternating, best of each: the machine is shared
        shutil.rmtree(tmp / "ours", ignore_errors=True)
        shutil.rmtree(tmp / "plain", ignore_errors=True)
        with bounded_memory():
            ours.append(timed(chip_scene, stack, tmp / "ours", size=size, overlap=overlap))
        plain.append(timed(plain_chips, stack, tmp / "plain", size, overlap))
        print(f"  run {i + 1}: chip_scene {ours[-1][0]:.2f} s, plain loop {plain[-1][0]:.2f} s", flush=True)
    with rasterio.open(stack) as src:
        mpx = src.width * src.height / 1e6
    best_ours, best_plain = min(ours), min(plain)
    return {"mpx": mpx, "ours_s": best_ours[0], "plain_s": best_plain[0], "ours_cpu_s": best_ours[1],
            "plain_cpu_s": best_plain[1]}  # fmt: skip


# -- peak memory, in a fresh process per size ---------------------------------------------------------------------


def peak_rss() -> int:
    """This process's peak resident set (bytes) since the last :func:`reset_peak_rss` (Linux ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS


def rss_child(scene: Path, out: Path, size: int, overlap: int) -> None:
    """Runs in its own process: chip then flatten ``scene``; prints baseline, peak and times."""
    # the steps' own imports, loaded before the baseline: they cost the same for any scene
    import pyarrow.parquet  # noqa: F401
    import pyogrio.raw  # noqa: F401
    import pyproj  # noqa: F401
    import shapely  # noqa: F401

    base = psutil.Process().memory_info().rss
    reset_peak_rss()
    with bounded_memory():
        chip_s = timed(chip_scene, scene, out / "chips", size=size, overlap=overlap)[0]
        start = time.perf_counter()
        rows = flatten_scene(scene, out / "pixels.parquet")
        flatten_s = time.perf_counter() - start
    print(json.dumps({"base": base, "peak": peak_rss(), "chip_s": chip_s, "flatten_s": flatten_s, "rows": rows}))


def rss_growth(scene: Path, out: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--rss-child", str(scene), "--out", str(out), "--size", str(args.size),
               "--overlap", str(args.overlap)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["growth"] = figures["peak"] - figures["base"]
    shutil.rmtree(out, ignore_errors=True)  # a 10 980² mosaic's chips and table are gigabytes
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", type=Path, default=DEFAULT_SCENE, help="SAFE folder or stacked GeoTIFF")
    parser.add_argument("--size", type=int, default=256, help="chip edge, pixels")
    parser.add_argument("--overlap", type=int, default=0, help="chip overlap, pixels")
    parser.add_argument("--mosaic", type=int, default=6, help="the big scene is an N × N mosaic of the scene")
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.out, args.size, args.overlap)
        return

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as folder:
        tmp = Path(folder)
        stack = scene_raster(args.scene, 60, tmp / "data")
        with rasterio.open(stack) as src:
            print(f"scene: {src.width} × {src.height} px, {src.count} bands ({stack.name})", flush=True)
            size = min(args.size, src.width, src.height)
        args.size = size
        print(f"chipping, {size}² chips, overlap {args.overlap}:", flush=True)
        speed = chip_speed(stack, tmp, size, args.overlap)
        ratio = speed["plain_s"] / speed["ours_s"]
        cpu_ratio = speed["plain_cpu_s"] / speed["ours_cpu_s"]
        print(f"chip_scene {speed['mpx'] / speed['ours_s']:.1f} Mpx/s ({speed['ours_s']:.2f} s, CPU "
              f"{speed['ours_cpu_s']:.2f} s); plain loop {speed['mpx'] / speed['plain_s']:.1f} Mpx/s "
              f"({speed['plain_s']:.2f} s, CPU {speed['plain_cpu_s']:.2f} s)", flush=True)  # fmt: skip
        print(f"chip_vs_plain: {ratio:.2f} (CPU time ratio {cpu_ratio:.2f})", flush=True)
        small = rss_growth(stack, tmp / "rss-scene", args)
        big = rss_growth(mosaic_of(stack, tmp / "mosaic.vrt", args.mosaic), tmp / "rss-mosaic", args)
        growth = big["growth"] / small["growth"]
        for label, f in (("scene", small), (f"{args.mosaic}×{args.mosaic} mosaic", big)):
            print(f"{label}: peak RSS growth {f['growth'] / 2**20:.0f} MB (chip {f['chip_s']:.1f} s, flatten "
                  f"{f['flatten_s']:.1f} s, {f['rows']:,} rows)", flush=True)  # fmt: skip
        print(f"rss_growth_big: {growth:.3f}", flush=True)
    print(json.dumps({"rss_growth_big": round(growth, 3), "chip_vs_plain": round(ratio, 2),
                      "chip_vs_plain_cpu": round(cpu_ratio, 2)}))  # fmt: skip


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
