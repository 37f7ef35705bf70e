"""Ensemble inference benchmark: torchbearer's pipeline vs the members' bare forward and vs plain TorchGeo.

    python bench/inference.py [--scene <SAFE folder or stacked GeoTIFF>] [--window 256] [--overlap 0.25]
                              [--repeats 2] [--no-torchgeo]

``--no-torchgeo`` leaves out the plain TorchGeo pipeline (the longest part: 17 minutes of a loaded full-scene
run), for a quicker run of the other figures (``vs_torchgeo`` null then).

Members: FCN, FarSeg (ResNet-50) and U-Net (ResNet-34), untrained, saved as torchbearer checkpoints and loaded
back. Figures, all from this one run (so the machine's speed cancels out):

- ``e2e_over_forward``: the members' forward passes alone, on exactly the windows the pipeline computed (already
  in memory, normalised, the pipeline's batches and model preparation) ÷ the pipeline from the SAFE folder
  (cold cache: the stack is built while windows flow from its first strips) to the finished COG, in CPU time
  (``e2e_over_forward_wall``: wall time).
- ``vs_torchgeo``: scene Mpx/s of torchbearer (from the SAFE folder, cold cache) ÷ those of a plain TorchGeo
  pipeline: ``Sentinel2`` over the band files (every band pinned to its 60 m file), ``GridGeoSampler`` +
  ``DataLoader``, one pass per member, full-scene float accumulation (``vs_torchgeo_cpu``: CPU time).
- ``rss_growth_big``: peak RSS above the loaded model for a 6 × 6 mosaic of the scene (a VRT) ÷ for the scene
  itself, each in a fresh process, with a 1 × 1 convolution as the only member.
- ``mpx_per_s``: scene Mpx/s of the three-member ensemble, stack building included.
- ``onnx_over_torch``: the members' forward on the pipeline's batches through PyTorch's prepared models (folded,
  channels-last) ÷ through the runtime the pipeline chose per member (``runtime: auto``: ONNX Runtime or
  PyTorch), same inputs; CPU-time ratio beside.
- ``int8_over_torch``: the same as ``onnx_over_torch`` with every member on ``runtime: onnx-int8`` (an 8-bit
  quantization calibrated on the first batch: set by a user, never chosen by ``auto``); ``int8_vs_torchgeo``
  its pipeline (quantization included) against plain TorchGeo; ``int8_label_agreement`` the share of the
  scene's valid pixels whose ensemble label (p ≥ 0.5) is the float32 pipeline's.
- ``io_over_decode``: with a 1 × 1 convolution as the only member (what a GPU forward costs the CPU), decoding the
  needed JPEG 2000 bands alone (rasterio, a thread per band) ÷ the whole pipeline from the SAFE folder (cold
  cache: stacking included) to the finished COG. Needs a SAFE folder (null for a GeoTIFF scene).
- ``warm_io_mpx_per_s``: the same 1 × 1 convolution from the ready stack, scene Mpx/s.

``e2e_over_forward`` and ``vs_torchgeo`` use the runtimes the pipeline chose. Every ratio has its CPU-time twin
(``…_cpu``) or wall-time twin (``…_wall``) beside it. The last line is one JSON object of these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import rasterio
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torchbearer.imagery.cache import StackBuild, band_indexes, stack_info, start_stack  # noqa: E402
from torchbearer.imagery.safe import read_safe  # noqa: E402
from torchbearer.imagery.spec import BANDS_BY_RESOLUTION  # noqa: E402
from torchbearer.inference.ensemble import PredictOptions, predict_scene  # noqa: E402
from torchbearer.inference.members import Member  # noqa: E402
from torchbearer.inference.onnx import card_path, choose_runtimes  # noqa: E402
from torchbearer.inference.prepare import input_layout, prepare_model  # noqa: E402
from torchbearer.inference.windows import pad_to_window  # noqa: E402
from torchbearer.inference.writer import NODATA  # noqa: E402
from torchbearer.ml.checkpoint import ModelCard, save_checkpoint  # noqa: E402
from torchbearer.ml.members import load_member  # noqa: E402
from torchbearer.ml.models import build_model  # noqa: E402

T = TypeVar("T")
DEFAULT_SCENE = REPO / "data" / "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
ARCHS = (("fcn", None), ("farseg", "resnet50"), ("unet", "resnet34"))
NORM = {"mean": [0.1] * 11, "std": [0.05] * 11}  # plausible reflectance statistics; the weights are random


def card(arch: str, backbone: str | None, bands: tuple[str, ...]) -> ModelCard:
    return ModelCard(arch=arch, backbone=backbone, in_channels=len(bands), num_classes=2,
                     classes=["background", "target"], task="binary", bands=list(bands), resolution=60.0,
                     norm={k: v[: len(bands)] for k, v in NORM.items()})  # fmt: skip


def make_members(folder: Path) -> list[Member]:
    """FCN, FarSeg and U-Net at 60 m, untrained, through a checkpoint file each."""
    members = []
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (arch, backbone) in enumerate(ARCHS):
        torch.manual_seed(seed)
        c = card(arch, backbone, BANDS_BY_RESOLUTION[60])
        model = build_model(arch, backbone, c.in_channels, c.out_channels)
        path = folder / f"{arch}.ckpt"
        save_checkpoint(model, c, path)
        loaded, loaded_card = load_member(path)
        members.append(Member(arch, loaded, loaded_card, source=str(path)))
    return members


def stack_of(scene: Path, cache: Path) -> Path | StackBuild:
    """The scene's 60 m input as a first prediction gets it: a build into ``cache`` that the prediction runs
    while it reads (a SAFE folder), or the GeoTIFF itself."""
    return scene if scene.is_file() else start_stack(scene, 60, cache)


def timed(function: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float, float]:
    """``(result, wall seconds, CPU seconds of this process)``."""
    start, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start, time.process_time() - cpu


def decode_alone(scene: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of decoding the 60 m stack's JPEG 2000 bands into memory, a thread per band (the
    floor of any pipeline that starts from the SAFE folder)."""
    from concurrent.futures import ThreadPoolExecutor

    product = read_safe(scene)
    files = [product.band_file(b, 60) for b in product.bands(60)]

    def decode(path: Path) -> int:
        with rasterio.open(path) as src:
            return int(src.read(1).shape[0])

    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(len(files)) as pool:
        list(pool.map(decode, files))
    return time.perf_counter() - start, time.process_time() - cpu


def conv1x1_member(bands: tuple[str, ...]) -> Member:
    """A near-free member: what a GPU's forward looks like from the CPU's side."""
    torch.manual_seed(0)
    return Member("conv1x1", nn.Conv2d(len(bands), 1, 1), card("conv1x1", None, bands))


# -- the members' forward alone ----------------------------------------------------------------------------------


def forward_alone(
    members: list[Member], stack: Path, batches: list, options: PredictOptions, models: list[nn.Module] | None = None
) -> tuple[float, float]:
    """Seconds (wall, CPU) of the members' forward passes on the pipeline's batches, inputs already in memory.

    The models are prepared afresh as the pipeline prepares them (preparation not timed), so the first calls
    pay the same one-time costs (oneDNN kernel set-up) as the pipeline's did.
    """
    device = torch.device(options.device)
    models = [prepare_model(m, device, options.optimize) for m in (models or [m.model for m in members])]
    info = stack_info(stack)
    layouts = [input_layout(model, device, options.optimize) for model in models]  # as the pipeline gives them
    inputs = []
    with rasterio.open(stack) as ds:
        for batch in batches:
            per_member = []
            dn = np.stack([
                pad_to_window(ds.read(window=rasterio.windows.Window(c, r, min(options.window, info.width - c),
                                                                     min(options.window, info.height - r))),
                              options.window)
                for r, c in batch
            ]).astype(np.float32)  # fmt: skip
            for m, layout in zip(members, layouts, strict=True):
                idx = [i - 1 for i in band_indexes(info, m.card.bands)]
                x = (dn[:, idx] + info.offset) / info.quantification - np.reshape(m.card.norm["mean"], (1, -1, 1, 1))
                x = torch.from_numpy((x / np.reshape(m.card.norm["std"], (1, -1, 1, 1))).astype(np.float32))
                per_member.append(x.contiguous(memory_format=layout))
            inputs.append(per_member)
    with torch.inference_mode():
        start, cpu = time.perf_counter(), time.process_time()
        for per_member in inputs:
            for model, x in zip(models, per_member, strict=True):
                model(x)
        return time.perf_counter() - start, time.process_time() - cpu


# -- the plain TorchGeo pipeline ---------------------------------------------------------------------------------


def torchgeo_baseline(scene: Path, members: list[Member], window: int, stride: int, batch_size: int,
                      out: Path) -> None:  # fmt: skip
    """A plain TorchGeo prediction: read per member, full-scene float sums, mean, uint8 GeoTIFF."""
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, Sentinel2, stack_samples
    from torchgeo.samplers import GridGeoSampler

    class Sentinel2At60m(Sentinel2):
        """TorchGeo 0.8.1 names each band's file by its native resolution; this product has R60m files only."""

        resolutions = dict.fromkeys(Sentinel2.all_bands, "60m")

    bands = BANDS_BY_RESOLUTION[60]
    if scene.is_dir():
        img_dir = next(scene.glob("GRANULE/*/IMG_DATA/R60m"))
        dataset = Sentinel2At60m(paths=img_dir, res=60, bands=bands)
        offset = -1000.0  # baseline 04.00 products (the fixtures and the crop)
    else:
        dataset = RasterDataset(paths=scene)
        offset = stack_info(scene).offset
    left, top = dataset.bounds[0].start, dataset.bounds[1].stop
    res = dataset.res[0]
    height = round((dataset.bounds[1].stop - dataset.bounds[1].start) / res)
    width = round((dataset.bounds[0].stop - dataset.bounds[0].start) / res)
    total = np.zeros((height, width), np.float32)
    for member in members:
        model = member.model.eval()
        mean = torch.tensor(member.card.norm["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(member.card.norm["std"]).view(1, -1, 1, 1)
        sums = np.zeros((height, width), np.float32)
        counts = np.zeros((height, width), np.float32)
        sampler = GridGeoSampler(dataset, size=window, stride=stride)
        loader = DataLoader(dataset, sampler=sampler, batch_size=batch_size, collate_fn=stack_samples)
        with torch.inference_mode():
            for sample in loader:
                x = ((sample["image"].float() + offset) / 10000 - mean) / std
                probs = torch.sigmoid(model(x))[:, 0].numpy()
                for p, bounds in zip(probs, sample["bounds"], strict=True):
                    col = round((bounds[0].start - left) / res)
                    row = round((top - bounds[1].stop) / res)
                    # TorchGeo's grid starts at the bottom-left corner: chips overhang the top and right edges.
                    r0, c0 = max(row, 0), max(col, 0)
                    r1, c1 = min(row + window, height), min(col + window, width)
                    sums[r0:r1, c0:c1] += p[r0 - row : r1 - row, c0 - col : c1 - col]
                    counts[r0:r1, c0:c1] += 1
        total += sums / np.maximum(counts, 1)
    result = np.rint(total / len(members) * 255).astype(np.uint8)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
               "crs": dataset.crs, "transform": rasterio.Affine(res, 0, left, 0, -res, top)}  # fmt: skip
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(result, 1)


# -- memory ------------------------------------------------------------------------------------------------------


def mosaic_vrt(stack: Path, path: Path, n: int) -> Path:
    """An ``n`` × ``n`` mosaic of ``stack`` as a VRT (band names and reflectance tags kept)."""
    info = stack_info(stack)
    w, h = info.width, info.height
    t = info.transform
    lines = [f'<VRTDataset rasterXSize="{w * n}" rasterYSize="{h * n}">',
             f"<SRS>{info.crs.to_wkt()}</SRS>", f"<GeoTransform>{t.c}, {t.a}, 0, {t.f}, 0, {t.e}</GeoTransform>",
             "<Metadata>", f'<MDI key="BOA_ADD_OFFSET">{info.offset:g}</MDI>',
             f'<MDI key="QUANTIFICATION_VALUE">{info.quantification:g}</MDI>', "</Metadata>"]  # fmt: skip
    for b, name in enumerate(info.bands, 1):
        lines += [f'<VRTRasterBand dataType="UInt16" band="{b}">', f"<Description>{name}</Description>",
                  "<NoDataValue>0</NoDataValue>"]  # fmt: skip
        for i in range(n):
            for j in range(n):
                lines += [
                    "<SimpleSource>", f'<SourceFilename relativeToVRT="0">{stack}</SourceFilename>',
                    f"<SourceBand>{b}</SourceBand>", f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                    f'<DstRect xOff="{j * w}" yOff="{i * h}" xSize="{w}" ySize="{h}"/>', "</SimpleSource>",
                ]  # fmt: skip
        lines.append("</VRTRasterBand>")
    lines.append("</VRTDataset>")
    path.write_text("\n".join(lines))
    return path


def peak_rss() -> int:
    """This process's peak resident set (bytes) since the last :func:`reset_peak_rss` (Linux ``VmHWM``).

    Not ``getrusage``: its ``ru_maxrss`` survives ``exec`` and would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS


def rss_child(stack: Path, out: Path, window: int, overlap: float, batch_size: int) -> None:
    """Runs in its own process: peak RSS above the loaded 1 × 1 convolution while predicting ``stack``."""
    member = conv1x1_member(stack_info(stack).bands)
    base = psutil.Process().memory_info().rss
    reset_peak_rss()
    start = time.perf_counter()
    predict_scene([member], [stack], out, PredictOptions(window=window, overlap=overlap, batch_size=batch_size))
    print(json.dumps({"base": base, "peak": peak_rss(), "seconds": time.perf_counter() - start}))


def rss_growth(stack: Path, out: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--rss-child", str(stack), "--out", str(out), "--window", str(args.window),
               "--overlap", str(args.overlap), "--batch-size", str(args.batch_size)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["growth"] = figures["peak"] - figures["base"]
    return figures


# -- main --------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scene", type=Path, default=DEFAULT_SCENE, help="SAFE folder or 60 m stacked GeoTIFF")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mosaic", type=int, default=6, help="the big scene is an N × N mosaic of the scene")
    parser.add_argument("--repeats", type=int, default=2, help="runs of the pipeline and of the bare forward")
    parser.add_argument("--no-torchgeo", action="store_true", help="leave out the plain TorchGeo pipeline")
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.out, args.window, args.overlap, args.batch_size)
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    scene = args.scene.resolve()
    members = make_members(tmp)
    torch_models = [m.model for m in members]
    stride = args.window - round(args.window * args.overlap)
    print(f"scene {scene.name}, members {[m.name for m in members]}, window {args.window}, overlap {args.overlap}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} torch threads", flush=True)  # fmt: skip

    baseline_s = baseline_cpu = None
    if not args.no_torchgeo:
        _, baseline_s, baseline_cpu = timed(
            torchgeo_baseline, scene, members, args.window, stride, args.batch_size, tmp / "torchgeo.tif"
        )
        print(f"plain TorchGeo: {baseline_s:.1f} s (CPU {baseline_cpu:.1f} s)", flush=True)

    # What a predict job with runtime: auto does: export, measure, keep the faster per member (logged).
    start = time.perf_counter()
    runtimes = choose_runtimes(members, "auto", args.device, window=args.window)
    choose_s = time.perf_counter() - start
    print(f"runtimes {dict(zip([m.name for m in members], runtimes, strict=True))} (chosen in {choose_s:.1f} s, "
          "exports included)", flush=True)  # fmt: skip
    options = PredictOptions(window=args.window, overlap=args.overlap, batch_size=args.batch_size,
                             device=args.device, runtime=",".join(runtimes))  # fmt: skip

    # The pipeline (from the SAFE folder, cold cache each time) and the bare forward alternate, best of --repeats
    # each: the machine may be shared, and a burst of someone else's work would otherwise decide the ratio.
    predict_times, forward_times, torch_times = [], [], []  # (wall, CPU) seconds
    for repeat in range(args.repeats):
        source = stack_of(scene, tmp / f"cache-{repeat}")
        result, wall, cpu = timed(predict_scene, members, [source], tmp / f"ensemble-{repeat}.tif", options)
        predict_times.append((wall, cpu))
        stack = Path(source)
        (stats,) = result.stats.values()
        forward_times.append(forward_alone(members, stack, stats.batches, options))
        torch_times.append(forward_alone(members, stack, stats.batches, options, torch_models))
        print(
            f"torchbearer from the {'SAFE folder (stack built meanwhile)' if scene.is_dir() else 'GeoTIFF'}: "
            f"{wall:.1f} s (CPU {cpu:.1f} s); {result.windows} windows, {result.windows_skipped} all no data "
            f"(skipped), {len(stats.batches)} batches; members' forward alone on the same batches: "
            f"{forward_times[-1][0]:.1f} s (CPU {forward_times[-1][1]:.1f} s), through PyTorch "
            f"{torch_times[-1][0]:.1f} s (CPU {torch_times[-1][1]:.1f} s)",
            flush=True,
        )
    best = lambda times, k: min(t[k] for t in times)  # noqa: E731
    ours_s, ours_cpu = best(predict_times, 0), best(predict_times, 1)
    forward_s, forward_cpu = best(forward_times, 0), best(forward_times, 1)

    # runtime: onnx-int8, set by the user (never chosen by auto): the same pipeline from the SAFE folder (cold,
    # quantization on the first batch included), then the forward alone on the same batches.
    int8_members = make_members(tmp / "int8-members")
    int8_runtimes = choose_runtimes(int8_members, "onnx-int8", args.device, window=args.window,
                                    int8_dir=tmp / "int8")  # fmt: skip
    int8_options = replace(options, runtime=",".join(int8_runtimes))
    int8_result, *int8_pipeline = timed(predict_scene, int8_members, [stack_of(scene, tmp / "cache-int8")],
                                        tmp / "ensemble-int8.tif", int8_options)  # fmt: skip
    (int8_stats,) = int8_result.stats.values()
    int8_forward = forward_alone(int8_members, stack, int8_stats.batches, int8_options,
                                 [m.model for m in int8_members])  # fmt: skip
    records = [json.loads(card_path(m.model.path).read_text()) for m in int8_members]
    with rasterio.open(result.output) as a, rasterio.open(int8_result.output) as b:
        p32, p8 = a.read(1), b.read(1)
    valid = p32 != NODATA
    int8_agreement = float(((p32 >= 127) == (p8 >= 127))[valid].mean())  # the ensemble's labels at p = 0.5
    print(f"onnx-int8 from the SAFE folder: {int8_pipeline[0]:.1f} s (CPU {int8_pipeline[1]:.1f} s, quantization "
          f"{sum(r['seconds'] for r in records):.1f} s of it); forward alone {int8_forward[0]:.1f} s (CPU "
          f"{int8_forward[1]:.1f} s); the ensemble's labels agree with float32's on {100 * int8_agreement:.2f} % "
          f"of the scene; per member on its calibration windows "
          f"{[round(100 * r['label_agreement'], 2) for r in records]} %", flush=True)  # fmt: skip

    info = stack_info(stack)
    mpx = info.width * info.height / 1e6

    # The near-free member: from the SAFE folder (cold) against decoding alone, then from the ready stack (warm).
    io: dict[str, float | None] = {"io_over_decode": None, "io_over_decode_cpu": None}
    conv = conv1x1_member(info.bands)
    conv_options = PredictOptions(window=args.window, overlap=args.overlap, batch_size=args.batch_size,
                                  device=args.device)  # fmt: skip
    if scene.is_dir():
        decode = decode_alone(scene)
        _, *cold = timed(predict_scene, [conv], [stack_of(scene, tmp / "cache-io")], tmp / "io-cold.tif",
                         conv_options)  # fmt: skip
        io = {"io_over_decode": decode[0] / cold[0], "io_over_decode_cpu": decode[1] / cold[1]}
        print(f"1×1 conv from the SAFE folder to the COG {cold[0]:.2f} s (CPU {cold[1]:.2f} s); decoding the "
              f"bands alone {decode[0]:.2f} s (CPU {decode[1]:.2f} s)", flush=True)  # fmt: skip
    _, *warm = timed(predict_scene, [conv], [stack], tmp / "io-warm.tif", conv_options)
    print(f"1×1 conv from the ready stack {warm[0]:.2f} s (CPU {warm[1]:.2f} s)", flush=True)

    small = rss_growth(stack, tmp / "rss-scene.tif", args)
    big = rss_growth(mosaic_vrt(stack, tmp / "mosaic.vrt", args.mosaic), tmp / "rss-mosaic.tif", args)
    print(f"1×1 conv: scene {info.width}² peak RSS +{small['growth'] / 2**20:.0f} MB above the model "
          f"({small['seconds']:.1f} s); {args.mosaic}×{args.mosaic} mosaic ({info.width * args.mosaic}²) "
          f"+{big['growth'] / 2**20:.0f} MB ({big['seconds']:.1f} s); base RSS {small['base'] / 2**20:.0f} MB",
          flush=True)  # fmt: skip

    def r(x: float | None, digits: int = 3) -> float | None:
        return None if x is None else round(x, digits)

    figures = {
        "mpx_per_s": round(mpx / ours_s, 4),
        "vs_torchgeo": None if baseline_s is None else round(baseline_s / ours_s, 2),
        "vs_torchgeo_cpu": None if baseline_cpu is None else round(baseline_cpu / ours_cpu, 2),
        "e2e_over_forward": r(forward_cpu / ours_cpu),
        "e2e_over_forward_wall": r(forward_s / ours_s),
        "io_over_decode": r(io["io_over_decode"]),
        "io_over_decode_cpu": r(io["io_over_decode_cpu"]),
        "warm_io_mpx_per_s": round(mpx / warm[0], 2),
        "warm_io_mpx_per_s_cpu": round(mpx / warm[1], 2),
        "onnx_over_torch": r(best(torch_times, 0) / forward_s),
        "onnx_over_torch_cpu": r(best(torch_times, 1) / forward_cpu),
        "int8_over_torch": r(best(torch_times, 0) / int8_forward[0]),
        "int8_over_torch_cpu": r(best(torch_times, 1) / int8_forward[1]),
        "int8_vs_torchgeo": None if baseline_s is None else round(baseline_s / int8_pipeline[0], 2),
        "int8_vs_torchgeo_cpu": None if baseline_cpu is None else round(baseline_cpu / int8_pipeline[1], 2),
        "int8_label_agreement": round(int8_agreement, 4),
        "rss_growth_big": round(big["growth"] / small["growth"], 3),
        "runtimes": ",".join(runtimes),
    }
    torchgeo = "not run" if baseline_s is None else f"{mpx / baseline_s:.3f} Mpx/s"
    print(f"scene {mpx:.2f} Mpx: torchbearer {mpx / ours_s:.3f} Mpx/s, plain TorchGeo {torchgeo}", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
