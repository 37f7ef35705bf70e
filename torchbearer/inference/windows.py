"""The grid of overlapping square windows a scene is predicted in.

All sizes and offsets are pixels of the grid being windowed. Windows are square (``size`` × ``size``) so that
90° rotations for test-time augmentation keep their shape. Along each axis the offsets step by the stride
``size - overlap``; the last window is moved back so that it ends exactly at the scene's edge (so no window
hangs over the edge of a scene at least one window wide, whatever the stride). A scene smaller than one window
along an axis gets a single window at offset 0 that hangs over the edge; the reader pads it (see
:func:`pad_to_window`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def overlap_pixels(size: int, overlap: float) -> int:
    """Overlap of neighbouring windows in pixels, from a fraction of ``size`` in [0, 1)."""
    if size < 1:
        raise ValueError(f"window size must be at least 1 pixel, got {size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap}")
    return round(size * overlap)


def axis_offsets(length: int, size: int, stride: int) -> list[int]:
    """Start offsets (pixels) of windows of ``size`` covering ``length`` pixels with the given ``stride``."""
    if length < 1:
        raise ValueError(f"cannot window an axis of {length} pixels")
    if stride < 1:
        raise ValueError(f"stride must be at least 1 pixel, got {stride}")
    last = max(length - size, 0)
    offsets = list(range(0, last, stride))
    offsets.append(last)
    return offsets


@dataclass(frozen=True)
class WindowGrid:
    """Windows of ``size`` pixels over a ``height`` × ``width`` grid, in rows of windows.

    ``rows`` and ``cols`` are the start offsets along each axis; the windows are their cross product.
    """

    height: int
    width: int
    size: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @classmethod
    def over(cls, height: int, width: int, size: int, overlap: float) -> WindowGrid:
        """The grid for a ``height`` × ``width`` scene, windows of ``size`` overlapping by ``overlap`` (fraction)."""
        stride = size - overlap_pixels(size, overlap)
        return cls(
            height=height,
            width=width,
            size=size,
            rows=tuple(axis_offsets(height, size, stride)),
            cols=tuple(axis_offsets(width, size, stride)),
        )

    @property
    def count(self) -> int:
        """Number of windows."""
        return len(self.rows) * len(self.cols)

    def row_index(self, first_row: int) -> int:
        """Index of the first row of windows touching scene rows ``>= first_row``.

        Rows of windows before it contribute nothing to those scene rows, so a prediction restarted there
        computes exactly the same values for them (used to resume).
        """
        for i, r in enumerate(self.rows):
            if r + self.size > first_row:
                return i
        return len(self.rows)

    def finished_until(self, index: int) -> int:
        """Scene rows ``< finished_until(i)`` get no contribution from rows of windows after ``i``."""
        return self.rows[index + 1] if index + 1 < len(self.rows) else self.height


def pad_to_window(block: np.ndarray, size: int) -> np.ndarray:
    """Pad the last two axes of ``block`` to ``size`` by repeating its edge pixels.

    Only needed for a scene smaller than a window; edge repetition keeps the padded pixels in the range of the
    scene's own values (zeros would look like no data or a dark shore to the model).
    """
    h, w = block.shape[-2:]
    if h == size and w == size:
        return block
    padded = np.empty((*block.shape[:-2], size, size), dtype=block.dtype)
    pad_into(block, padded)
    return padded


def pad_into(block: np.ndarray, out: np.ndarray) -> None:
    """Copy ``block`` into the top-left of ``out`` (same leading axes, last two at least as large) and fill the
    rest by repeating its edge pixels, as :func:`pad_to_window` does, without allocating."""
    h, w = block.shape[-2:]
    out[..., :h, :w] = block
    if w < out.shape[-1]:
        out[..., :h, w:] = block[..., :, w - 1 : w]
    if h < out.shape[-2]:
        out[..., h:, :] = out[..., h - 1 : h, :]
