"""Smooth blending weights for overlapping windows, normalised so that they sum to one at every pixel.

A window's weight is separable, ``w(y) · w(x)``: 1 in its middle, falling smoothly (a squared sine) towards its
edges over the overlap, never to zero (so pixels at the scene's edge, seen by one window only, still count).
Because the grid of windows is the cross product of row and column offsets, the sum of all windows' weights at a
pixel is also separable, ``N(y) · N(x)``, so each window's weights can be divided by it up front: the blended
value is then a plain sum of ``p · w / N`` and no weight accumulator is needed. A model that outputs a constant
blends to that constant (up to float rounding), and there are no seams at window borders.
"""

from __future__ import annotations

import numpy as np

from torchbearer.inference.windows import WindowGrid


def window_weights(size: int, ramp: int) -> np.ndarray:
    """1-D weights (float64, length ``size``) rising over ``ramp`` pixels at both ends, 1 in between."""
    weights = np.ones(size, dtype=np.float64)
    ramp = min(ramp, size // 2)
    if ramp > 0:
        t = (np.arange(ramp) + 0.5) / ramp
        rise = np.sin(np.pi / 2 * t) ** 2
        weights[:ramp] = rise
        weights[size - ramp :] = rise[::-1]
    return weights


def axis_factors(offsets: tuple[int, ...], size: int, length: int, ramp: int) -> list[np.ndarray]:
    """For each window offset on an axis of ``length`` pixels, its normalised 1-D weights (float32, ``size``).

    Entries that fall beyond the axis' end (a scene smaller than a window) are 0.
    """
    weights = window_weights(size, ramp)
    total = np.zeros(length, dtype=np.float64)
    for o in offsets:
        n = min(size, length - o)
        total[o : o + n] += weights[:n]
    factors = []
    for o in offsets:
        n = min(size, length - o)
        factor = np.zeros(size, dtype=np.float64)
        factor[:n] = weights[:n] / total[o : o + n]
        factors.append(factor.astype(np.float32))
    return factors


class GridWeights:
    """Normalised blending weights of every window of a :class:`WindowGrid`.

    Args:
        grid: the windows.
        ramp: pixels over which a window's weight falls off at its edges (usually the overlap).
    """

    def __init__(self, grid: WindowGrid, ramp: int) -> None:
        self.row_factors = axis_factors(grid.rows, grid.size, grid.height, ramp)
        self.col_factors = axis_factors(grid.cols, grid.size, grid.width, ramp)

    def window(self, row_index: int, col_index: int) -> np.ndarray:
        """Weights (float32, size × size) of the window at row ``row_index``, column ``col_index`` of the grid."""
        return np.outer(self.row_factors[row_index], self.col_factors[col_index])
