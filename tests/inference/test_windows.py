"""Window grid and blending weights: coverage, edges, strides that do not divide, weights that sum to one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchbearer.inference.blending import GridWeights, window_weights
from torchbearer.inference.combine import combine
from torchbearer.inference.tta import tta_transforms
from torchbearer.inference.windows import WindowGrid, axis_offsets, pad_to_window


def blended_sum(grid: WindowGrid, weights: GridWeights) -> np.ndarray:
    total = np.zeros((grid.height, grid.width), dtype=np.float64)
    for i, r in enumerate(grid.rows):
        for j, c in enumerate(grid.cols):
            w = weights.window(i, j)
            h, v = min(grid.size, grid.height - r), min(grid.size, grid.width - c)
            total[r : r + h, c : c + v] += w[:h, :v]
    return total


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (512, [0, 192, 256]),
        (320, [0, 64]),
        (256, [0]),
        (100, [0]),
        (1830, [0, 192, 384, 576, 768, 960, 1152, 1344, 1536, 1574]),
    ],
)
def test_axis_offsets_cover_the_axis_and_end_at_its_edge(length: int, expected: list[int]) -> None:
    offsets = axis_offsets(length, 256, 192)
    assert offsets == expected
    covered = np.zeros(length, bool)
    for o in offsets:
        covered[o : o + 256] = True
    assert covered.all()


@pytest.mark.parametrize(("height", "width"), [(320, 512), (100, 150), (300, 417), (1000, 257)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_weights_sum_to_one_everywhere(height: int, width: int, overlap: float) -> None:
    grid = WindowGrid.over(height, width, 256, overlap)
    weights = GridWeights(grid, round(256 * overlap))
    np.testing.assert_allclose(blended_sum(grid, weights), 1.0, rtol=0, atol=1e-6)


def test_weights_are_smooth_and_never_zero() -> None:
    w = window_weights(256, 64)
    assert w.min() > 0 and w.max() == 1.0
    assert np.abs(np.diff(w)).max() < 0.03  # no step: seams would show as one
    assert np.allclose(w, w[::-1])


def test_grid_for_a_scene_smaller_than_a_window_pads_its_edges() -> None:
    grid = WindowGrid.over(100, 150, 256, 0.25)
    assert (grid.rows, grid.cols) == ((0,), (0,))
    block = np.arange(2 * 100 * 150, dtype=np.uint16).reshape(2, 100, 150)
    padded = pad_to_window(block, 256)
    assert padded.shape == (2, 256, 256)
    assert (padded[:, 99, 149] == padded[:, 255, 255]).all()


def test_resume_row_index_and_finished_rows() -> None:
    grid = WindowGrid.over(1830, 1830, 256, 0.25)
    assert grid.finished_until(0) == 192 and grid.finished_until(len(grid.rows) - 1) == 1830
    assert grid.row_index(0) == 0
    assert grid.row_index(192) == 0  # rows 192..255 still get window row 0
    assert grid.row_index(256) == 1


def test_bad_window_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        WindowGrid.over(10, 10, 256, 1.0)
    with pytest.raises(ValueError, match="window size"):
        WindowGrid.over(10, 10, 0, 0.25)


def test_combine_rules() -> None:
    probs = np.array([[[[0.2, 0.9]]], [[[0.6, 0.7]]], [[[0.7, 0.1]]]], dtype=np.float32)  # 3 members, binary
    weights = np.array([1.0, 1.0, 2.0])
    np.testing.assert_allclose(combine(probs, weights, "mean", "binary"), [[[0.5, 1.7 / 3]]], rtol=1e-6)
    np.testing.assert_allclose(combine(probs, weights, "weighted", "binary"), [[[0.55, 0.45]]], rtol=1e-6)
    np.testing.assert_allclose(combine(probs, weights, "max", "binary"), [[[0.7, 0.9]]])
    np.testing.assert_allclose(combine(probs, weights, "vote", "binary"), [[[0.75, 0.5]]])
    multi = np.array([[[[0.1]], [[0.7]], [[0.2]]], [[[0.5]], [[0.2]], [[0.3]]]], dtype=np.float32)
    np.testing.assert_allclose(combine(multi, np.ones(2), "vote", "multiclass")[:, 0, 0], [0.5, 0.5, 0.0])


@pytest.mark.parametrize("tta", ["none", "flips", "d4"])
def test_tta_transforms_invert(tta: str) -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    pairs = tta_transforms(tta)
    assert len(pairs) == {"none": 1, "flips": 3, "d4": 8}[tta]
    for apply, invert in pairs:
        assert torch.equal(invert(apply(x)), x)
    if tta == "d4":  # the eight are distinct
        assert len({tuple(apply(x).flatten().tolist()) for apply, _ in pairs}) == 8
