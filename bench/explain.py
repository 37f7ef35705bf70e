"""Scene Grad-CAM benchmark: the CAM pipeline vs ``predict`` on the same windows, and its memory as scenes grow.

    python bench/explain.py [--scene <SAFE folder or 60 m stacked GeoTIFF>] [--window 256] [--overlap 0.25]

Model: a U-Net (ResNet-34), untrained, saved as a torchbearer checkpoint and loaded back. Figures, all from this
one run (so the machine's speed cancels out):

- ``cam_over_predict``: scene Mpx/s of ``explain``'s scene Grad-CAM (``explain/scene.py``: the target layer's
  activations and gradients, one forward and one backward pass a batch, blended windows, float32 COG) ÷ scene
  Mpx/s of ``predict`` with the same model, windows, overlap and batch size (its default forward preparation:
  batch norms folded, channels-last). Also printed: the same in CPU time, and against ``predict`` with
  ``optimize: false`` (the eager forward the CAM runs).
- ``rss_growth_big``: peak RSS above the loaded model for the CAMs of a 6 × 6 mosaic of the scene (a VRT) ÷ for
  the scene itself, each in a fresh process, with a small convolution net (3 × 3 conv, ReLU, 1 × 1 head) so
  that the pipeline's memory, not the network's activations, is measured; both with the same batch (see
  :func:`memory_batch`). ``--memory-only`` measures just this.

The last line is one JSON object of these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inference import DEFAULT_SCENE, card, mosaic_vrt, peak_rss, reset_peak_rss  # noqa: E402

from torchbearer.allocator import share_one_arena  # noqa: E402
from torchbearer.explain.model import find_layer  # noqa: E402
from torchbearer.explain.scene import scene_cams  # noqa: E402
from torchbearer.imagery.cache import build_stack, stack_info  # noqa: E402
from torchbearer.inference.ensemble import PredictOptions, predict_scene  # noqa: E402
from torchbearer.inference.members import Member  # noqa: E402
from torchbearer.ml.checkpoint import save_checkpoint  # noqa: E402
from torchbearer.ml.members import load_member  # noqa: E402
from torchbearer.ml.models import build_model  # noqa: E402


def unet(folder: Path, bands: tuple[str, ...]) -> Path:
    """An untrained U-Net (ResNet-34) checkpoint for ``bands`` at 60 m."""
    torch.manual_seed(0)
    c = card("unet", "resnet34", bands)
    path = folder / "unet.ckpt"
    save_checkpoint(build_model("unet", "resnet34", c.in_channels, c.out_channels), c, path)
    return path


class SmallNet(nn.Module):
    """A 3 × 3 convolution and ReLU (the CAM's target layer, ``features``), then a 1 × 1 head."""

    def __init__(self, bands: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(bands, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def rss_child(stack: Path, out: Path, window: int, overlap: float, batch_size: int) -> None:
    """Runs in its own process: peak RSS above the loaded small net while making the scene's Grad-CAM."""
    share_one_arena()  # as the explain kind does in its worker
    torch.manual_seed(0)
    bands = stack_info(stack).bands
    model = SmallNet(len(bands)).eval()
    base = psutil.Process().memory_info().rss
    reset_peak_rss()
    start = time.perf_counter()
    scene_cams(model, card("small", None, bands), model.features, ["gradcam"], 1, stack, out, window=window,
               overlap=overlap, batch_size=batch_size)  # fmt: skip
    print(json.dumps({"base": base, "peak": peak_rss(), "seconds": time.perf_counter() - start}))


def memory_batch(info, args: argparse.Namespace) -> int:
    """The batch both memory children use: ``--batch-size``, or fewer when the scene's rows hold fewer windows
    (a batch never spans two rows: on the 512-pixel-wide crop, three windows of 256 at overlap 0.25, so its
    batches were of three while the mosaic's were of four, and the activations of that fourth window, about
    25 MB, counted as growth with the scene)."""
    from torchbearer.inference.windows import WindowGrid

    return min(args.batch_size, len(WindowGrid.over(info.height, info.width, args.window, args.overlap).cols))


def rss_growth(stack: Path, out: Path, args: argparse.Namespace, batch: int) -> dict:
    command = [sys.executable, __file__, "--rss-child", str(stack), "--out", str(out), "--window", str(args.window),
               "--overlap", str(args.overlap), "--batch-size", str(batch)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["growth"] = figures["peak"] - figures["base"]
    return figures


def report_memory(info, small: dict, big: dict, args: argparse.Namespace) -> None:
    """Print the two children's figures."""
    print(f"small net: scene {info.width}×{info.height} peak RSS +{small['growth'] / 2**20:.0f} MB above the model "
          f"({small['seconds']:.1f} s); {args.mosaic}×{args.mosaic} mosaic +{big['growth'] / 2**20:.0f} MB "
          f"({big['seconds']:.1f} s); base RSS {small['base'] / 2**20:.0f} MB", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scene", type=Path, default=DEFAULT_SCENE, help="SAFE folder or 60 m stacked GeoTIFF")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--mosaic", type=int, default=6, help="the big scene is an N × N mosaic of the scene")
    parser.add_argument("--memory-only", action="store_true", help="only rss_growth_big (skip the U-Net timings)")
    parser.add_argument("--timing-only", action="store_true", help="only cam_over_predict (skip the memory children)")
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.out, args.window, args.overlap, args.batch_size)
        return
    # The CAMs are timed as the explain kind runs them (its allocator setting); predict, which makes no setting,
    # runs under it too in this process (one arena left its memory and time as they were: docs/benchmarks.md).
    share_one_arena()

    tmp = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    scene = args.scene.resolve()
    stack = scene if scene.is_file() else build_stack(scene, 60, tmp / "cache")
    info = stack_info(stack)
    mpx = info.width * info.height / 1e6
    if args.memory_only:
        batch = memory_batch(info, args)
        print(f"scene {stack.name} ({info.width} × {info.height}), memory only, batch {batch}", flush=True)
        small = rss_growth(stack, tmp / "rss-scene.tif", args, batch)
        big = rss_growth(mosaic_vrt(stack, tmp / "mosaic.vrt", args.mosaic), tmp / "rss-mosaic.tif", args, batch)
        report_memory(info, small, big, args)
        print(json.dumps({"rss_growth_big": round(big["growth"] / small["growth"], 3)}))
        return
    checkpoint = unet(tmp, info.bands)
    print(f"scene {stack.name} ({info.width} × {info.height}), U-Net ResNet-34, window {args.window}, overlap "
          f"{args.overlap}, batch {args.batch_size}, {torch.get_num_threads()} torch threads", flush=True)  # fmt: skip

    times = {}
    for optimize in (True, False):
        model, c = load_member(checkpoint)
        member = Member("unet", model, c, source=str(checkpoint))
        options = PredictOptions(window=args.window, overlap=args.overlap, batch_size=args.batch_size,
                                 optimize=optimize)  # fmt: skip
        start, cpu = time.perf_counter(), time.process_time()
        predict_scene([member], [stack], tmp / f"predict-{optimize}.tif", options)
        times[f"predict optimize={optimize}"] = (time.perf_counter() - start, time.process_time() - cpu)
    model, c = load_member(checkpoint)
    _, layer = find_layer(model, None)
    start, cpu = time.perf_counter(), time.process_time()
    scene_cams(model, c, layer, ["gradcam"], 1, stack, tmp / "cam.tif", window=args.window, overlap=args.overlap,
               batch_size=args.batch_size)  # fmt: skip
    times["gradcam"] = (time.perf_counter() - start, time.process_time() - cpu)
    for name, (wall, cpu) in times.items():
        print(f"{name}: {wall:.1f} s wall ({mpx / wall:.3f} Mpx/s), CPU {cpu:.1f} s", flush=True)
    cam_wall, cam_cpu = times["gradcam"]
    pred_wall, pred_cpu = times["predict optimize=True"]
    eager_wall, eager_cpu = times["predict optimize=False"]
    print(f"Grad-CAM ÷ predict: {pred_wall / cam_wall:.3f} wall, {pred_cpu / cam_cpu:.3f} CPU; ÷ eager predict: "
          f"{eager_wall / cam_wall:.3f} wall, {eager_cpu / cam_cpu:.3f} CPU", flush=True)  # fmt: skip

    if args.timing_only:
        print(json.dumps({"cam_over_predict": round(pred_wall / cam_wall, 3)}))
        return
    batch = memory_batch(info, args)
    print(f"memory: batches of {batch} windows in both children", flush=True)
    small = rss_growth(stack, tmp / "rss-scene.tif", args, batch)
    big = rss_growth(mosaic_vrt(stack, tmp / "mosaic.vrt", args.mosaic), tmp / "rss-mosaic.tif", args, batch)
    report_memory(info, small, big, args)
    print(json.dumps({"cam_over_predict": round(pred_wall / cam_wall, 3),
                      "rss_growth_big": round(big["growth"] / small["growth"], 3)}))  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
