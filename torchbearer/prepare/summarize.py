"""The ``summarize`` step: what a scene or a chip folder holds, before a night is spent training on it.

Per band: valid pixel count, no-data share, min, max, mean, std and percentiles (1, 5, 25, 50, 75, 95, 99);
a histogram per band (PNG); the class balance of the masks (per split for a chip folder). Written as
``band_stats.csv``, ``class_balance.csv``, ``hist_<band>.png`` and ``summary.md`` (with the value domain, so a
reflectance band at 0–255 or a single-class mask shows up at a glance).

Streamed: rasters are read a block (or a chip) at a time; 8- and 16-bit integer bands get exact percentiles
from a full histogram, other types a second pass over a 4096-bin histogram between the band's min and max.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from torchbearer.prepare import PrepareError, Stopped
from torchbearer.prepare.chip import MANIFEST, SPLITS, ChipManifest
from torchbearer.prepare.rasters import IGNORE, Report, band_names, no_report, open_raster, value_domain

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
FLOAT_BINS = 4096
PLOT_BINS = 128
BLOCK = 1024


@dataclass
class BandStats:
    """Running statistics of one band (float64 sums: exact enough for 10⁹ uint16 pixels)."""

    name: str
    exact: bool
    pixels: int = 0
    nodata: int = 0
    total: float = 0.0
    squares: float = 0.0
    low: float = np.inf
    high: float = -np.inf
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def add(self, values: np.ndarray, missing: int) -> None:
        self.nodata += missing
        if not values.size:
            return
        self.pixels += values.size
        as_float = values.astype(np.float64)
        self.total += float(as_float.sum())
        self.squares += float(np.square(as_float).sum())
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        if self.exact:
            counts = np.bincount(values.ravel(), minlength=self.hist.size)
            if counts.size > self.hist.size:
                counts[: self.hist.size] += self.hist
                self.hist = counts
            else:
                self.hist += counts

    def add_to_histogram(self, values: np.ndarray) -> None:
        """Second pass (inexact types): count ``values`` into bins between the band's min and max."""
        if self.hist.size == 0:
            self.hist = np.zeros(FLOAT_BINS, dtype=np.int64)
        counts, _ = np.histogram(values, bins=FLOAT_BINS, range=(self.low, max(self.high, self.low + 1e-12)))
        self.hist += counts

    def edges(self) -> np.ndarray:
        """Left edge of each histogram bin."""
        if self.exact:
            return np.arange(self.hist.size, dtype=np.float64)
        return np.linspace(self.low, max(self.high, self.low + 1e-12), FLOAT_BINS + 1)[:-1]

    def row(self) -> dict[str, Any]:
        seen = self.pixels + self.nodata
        mean = self.total / self.pixels if self.pixels else float("nan")
        var = max(self.squares / self.pixels - mean * mean, 0.0) if self.pixels else float("nan")
        row = {"band": self.name, "valid_pixels": self.pixels, "nodata_share": self.nodata / seen if seen else 1.0,
               "min": self.low if self.pixels else float("nan"), "max": self.high if self.pixels else float("nan"),
               "mean": mean, "std": var**0.5}  # fmt: skip
        cumulative = np.cumsum(self.hist)
        for q in PERCENTILES:
            if not self.pixels:
                row[f"p{q}"] = float("nan")
                continue
            index = int(np.searchsorted(cumulative, q / 100 * self.pixels, side="left"))
            row[f"p{q}"] = float(self.edges()[min(index, self.hist.size - 1)])
        return row


@dataclass(frozen=True)
class Summary:
    """What summarize wrote and found."""

    bands: list[dict[str, Any]]
    classes: dict[str, dict[int, int]]
    value_domain: str
    files: list[Path]


def _raster_blocks(path: Path, should_stop: Callable[[], bool]) -> Iterator[tuple[np.ndarray, float | None]]:
    with open_raster(path) as ds:
        for r in range(0, ds.height, BLOCK):
            for c in range(0, ds.width, BLOCK):
                if should_stop():
                    raise Stopped("summarize stopped")
                yield ds.read(window=Window(c, r, min(BLOCK, ds.width - c), min(BLOCK, ds.height - r))), ds.nodata


def _chip_blocks(files: list[Path], should_stop: Callable[[], bool]) -> Iterator[tuple[np.ndarray, float | None]]:
    for path in files:
        if should_stop():
            raise Stopped("summarize stopped")
        with open_raster(path) as ds:
            yield ds.read(), ds.nodata


def summarize(
    source: Path,
    output: Path,
    *,
    mask: Path | None = None,
    report: Report = no_report,
    should_stop: Callable[[], bool] = bool,
) -> Summary:
    """Summarize a raster (with an optional mask on its grid) or a chip folder into the folder ``output``."""
    source = Path(source)
    chips = (source / MANIFEST).is_file()
    if chips:
        manifest = ChipManifest.read(source)
        frames = sorted(source.glob("*_frames/*.tif"))
        if not frames:
            raise PrepareError(f"chip folder {source} holds no frames")
        with open_raster(frames[0]) as ds:
            names, dtype, domain = band_names(ds), np.dtype(ds.dtypes[0]), manifest.value_domain

        def blocks() -> Iterator[tuple[np.ndarray, float | None]]:
            return _chip_blocks(frames, should_stop)

        masks = {s: sorted(source.glob(f"{s}_masks/*.tif")) for s in SPLITS}
        masks = {s: files for s, files in masks.items() if files}
    else:
        with open_raster(source) as ds:
            names, dtype, domain = band_names(ds), np.dtype(ds.dtypes[0]), value_domain(ds)

        def blocks() -> Iterator[tuple[np.ndarray, float | None]]:
            return _raster_blocks(source, should_stop)

        masks = {"all": [Path(mask)]} if mask is not None else {}
    exact = dtype.kind == "u" and dtype.itemsize <= 2
    stats = [BandStats(name, exact) for name in names]
    total = len(frames) if chips else None
    for done, (data, nodata) in enumerate(blocks(), 1):
        _add_block(stats, data, nodata)
        report("summarizing", done=done, total=total, unit="chips" if chips else "blocks", step="summarize")
    if not exact:  # second pass: histograms between each band's min and max
        for data, nodata in blocks():
            for band, values in zip(stats, data, strict=True):
                band.add_to_histogram(values[_valid(values, nodata)])
    classes = {split: _class_counts(files, should_stop) for split, files in masks.items()}
    output.mkdir(parents=True, exist_ok=True)
    rows = [band.row() for band in stats]
    files = [_write_band_csv(rows, output / "band_stats.csv"), _write_class_csv(classes, output / "class_balance.csv")]
    files += _plot_histograms(stats, output)
    files.append(_write_markdown(source, domain, str(dtype), rows, classes, output / "summary.md"))
    return Summary(rows, classes, domain, files)


def _valid(values: np.ndarray, nodata: float | None) -> np.ndarray:
    valid = np.isfinite(values) if values.dtype.kind == "f" else np.ones(values.shape, dtype=bool)
    if nodata is not None and not np.isnan(nodata):
        valid &= values != nodata
    return valid


def _add_block(stats: list[BandStats], data: np.ndarray, nodata: float | None) -> None:
    for band, values in zip(stats, data, strict=True):
        valid = _valid(values, nodata)
        band.add(values[valid], int(valid.size - valid.sum()))


def _class_counts(files: list[Path], should_stop: Callable[[], bool]) -> dict[int, int]:
    counts = np.zeros(256, dtype=np.int64)
    for data, _ in _chip_blocks(files, should_stop) if len(files) > 1 else _raster_blocks(files[0], should_stop):
        counts += np.bincount(data[0].ravel(), minlength=256)[:256]
    return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}


def _write_band_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_class_csv(classes: dict[str, dict[int, int]], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "value", "pixels", "share_of_labelled"])
        for split, counts in classes.items():
            labelled = sum(n for v, n in counts.items() if v != IGNORE) or 1
            for value, pixels in sorted(counts.items()):
                share = "" if value == IGNORE else f"{pixels / labelled:.6f}"
                writer.writerow([split, value, pixels, share])
    return path


def _plot_histograms(stats: list[BandStats], output: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for band in stats:
        path = output / f"hist_{band.name}.png"
        fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
        if band.pixels:
            top = band.high + 1 if band.exact else max(band.high, band.low + 1e-12)
            bins = np.linspace(band.low, top, PLOT_BINS + 1)
            counts, _ = np.histogram(band.edges(), bins=bins, weights=band.hist)
            ax.stairs(counts, bins, fill=True, color="#4477aa")  # one artist: bars would be one per bin
        ax.set_title(f"{band.name}: {band.pixels:,} valid pixels")
        ax.set_xlabel("value")
        ax.set_ylabel("pixels")
        fig.subplots_adjust(left=0.18, bottom=0.17, right=0.97, top=0.9)
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _write_markdown(
    source: Path, domain: str, dtype: str, rows: list[dict[str, Any]], classes: dict[str, dict[int, int]], path: Path
) -> Path:
    lines = [f"# Summary of {source.name}", "", f"- value domain: **{domain}** ({dtype})", ""]
    lines += ["| band | valid px | no data | min | max | mean | std | p1 | p50 | p99 |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(
            f"| {r['band']} | {r['valid_pixels']:,} | {r['nodata_share']:.1%} | {r['min']:.4g} | {r['max']:.4g} | "
            f"{r['mean']:.4g} | {r['std']:.4g} | {r['p1']:.4g} | {r['p50']:.4g} | {r['p99']:.4g} |"
        )
    for split, counts in classes.items():
        labelled = {v: n for v, n in counts.items() if v != IGNORE}
        total = sum(labelled.values()) or 1
        shares = ", ".join(f"{v}: {n / total:.1%}" for v, n in sorted(labelled.items()))
        lines += [
            "",
            f"- classes ({split}): {shares or 'no labelled pixel'}; no label (255): {counts.get(IGNORE, 0):,} px",
        ]
        if len(labelled) < 2:
            lines.append(f"- **warning**: the {split} masks hold a single class: nothing to learn from them")
    path.write_text("\n".join(lines) + "\n")
    return path
