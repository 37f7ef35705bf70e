"""A picture in the terminal: the newest prediction map or plot of a job, drawn with half-block characters.

Each cell shows two pixels, one above the other ("▀" in the top pixel's colour on the bottom pixel's), so a
cell is one pixel wide and two tall: square pixels on a usual terminal font. Images are read downsampled
(GeoTIFF overviews through rasterio, JPEG draft mode through Pillow), never whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.widget import Widget

if TYPE_CHECKING:
    import numpy as np

#: Largest preview read from disk, in pixels (width, height): a 160×48 terminal shows at most 160×96.
PREVIEW_PIXELS = (200, 120)


def load_preview(path: Path, max_size: tuple[int, int] = PREVIEW_PIXELS) -> np.ndarray | None:
    """An image as uint8 RGB pixels (H, W, 3) no larger than ``max_size``; None if it cannot be read."""
    try:
        if path.suffix.lower() in {".tif", ".tiff"}:
            return _read_raster(path, max_size)
        return _read_picture(path, max_size)
    except Exception:  # noqa: BLE001 - a half-written or odd file: no preview, never a crash
        return None


def _read_picture(path: Path, max_size: tuple[int, int]) -> np.ndarray:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", max_size)
        image.thumbnail(max_size)
        return np.asarray(image.convert("RGB"))


def _read_raster(path: Path, max_size: tuple[int, int]) -> np.ndarray:
    """A GeoTIFF read at a reduced size (from its overviews when it has them), stretched to 0–255."""
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as dataset:
        scale = max(dataset.width / max_size[0], dataset.height / max_size[1], 1.0)
        shape = (max(1, round(dataset.height / scale)), max(1, round(dataset.width / scale)))
        bands = [1, 2, 3] if dataset.count >= 3 else [1]
        data = dataset.read(bands, out_shape=(len(bands), *shape), resampling=Resampling.nearest, masked=True)
    if data.dtype == np.uint8:  # the probability maps: 0–255 as written
        low, high = 0.0, 255.0
    else:  # reflectance, DN, floats: a 2–98 % stretch of the valid pixels
        valid = data.compressed()
        low, high = np.percentile(valid, [2, 98]) if valid.size else (0.0, 1.0)
    stretched = (data.astype("float32").filled(low) - low) / max(float(high - low), 1e-9)
    scaled = np.clip(stretched * 255, 0, 255).astype(np.uint8)
    rgb = np.repeat(scaled, 3, axis=0) if len(bands) == 1 else scaled
    return np.moveaxis(rgb, 0, -1)


class HalfBlockImage:
    """A Rich renderable of RGB pixels fitted into ``width`` × ``height`` cells, keeping the aspect ratio."""

    def __init__(self, pixels: np.ndarray, width: int, height: int) -> None:
        self.pixels = pixels
        self.width = width
        self.height = height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        import numpy as np

        rows, cols = self.pixels.shape[:2]
        scale = min(self.width / cols, 2 * self.height / rows)
        out_w, out_h = max(1, int(cols * scale)), max(2, int(rows * scale) // 2 * 2)
        ys = np.minimum((np.arange(out_h) / scale).astype(int), rows - 1)
        xs = np.minimum((np.arange(out_w) / scale).astype(int), cols - 1)
        sampled = self.pixels[ys][:, xs]
        styles: dict[tuple, Style] = {}
        for y in range(0, out_h, 2):
            top, bottom = sampled[y], sampled[y + 1]
            for x in range(out_w):
                key = (*top[x], *bottom[x])
                style = styles.get(key)
                if style is None:
                    style = styles[key] = Style(color=f"rgb({key[0]},{key[1]},{key[2]})",
                                                bgcolor=f"rgb({key[3]},{key[4]},{key[5]})")  # fmt: skip
                yield Segment("▀", style)
            yield Segment.line()


class ImagePreview(Widget):
    """Shows :attr:`pixels` (set from the poller's thread results) scaled to the widget, or what is missing."""

    DEFAULT_CSS = """
    ImagePreview { height: 1fr; min-height: 4; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.pixels: np.ndarray | None = None
        self.caption = "no map or plot yet"

    def show(self, pixels: np.ndarray | None, caption: str) -> None:
        """New pixels (None keeps the ones shown) and the line shown while there are none."""
        if pixels is not None:
            self.pixels = pixels
        self.caption = caption
        self.refresh()

    def render(self) -> Text | HalfBlockImage:
        if self.pixels is None:
            return Text(self.caption, style="dim")
        return HalfBlockImage(self.pixels, self.size.width, self.size.height)
