"""Vector labels burnt onto the real scene's grid: exact pixels from a polygon in the scene's CRS and the same
polygon in EPSG:4326, burn order, the ignore band, and the errors a user meets first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely

from tests.prepare.conftest import CLOUD_GEOJSON, CLOUD_TIF, write_polygons
from torchbearer.imagery.aoi import to_crs
from torchbearer.imagery.grid import Grid
from torchbearer.prepare import PrepareError
from torchbearer.prepare.rasterize import rasterize_labels
from torchbearer.prepare.rasters import IGNORE

ROWS, COLS = slice(50, 80), slice(100, 140)  # the known polygon's pixels


@pytest.fixture(scope="module")
def grid(scene: Path) -> Grid:
    with rasterio.open(scene) as src:
        return Grid.of(src)


def pixel_box(grid: Grid, rows: slice, cols: slice) -> shapely.Polygon:
    """The polygon whose edges are the pixel edges around ``rows`` × ``cols`` (scene CRS)."""
    left, top = grid.transform @ (cols.start, rows.start)
    right, bottom = grid.transform @ (cols.stop, rows.stop)
    return shapely.box(left, bottom, right, top)


def expected(grid: Grid, *parts: tuple[slice, slice, int]) -> np.ndarray:
    mask = np.zeros((grid.height, grid.width), dtype=np.uint8)
    for rows, cols, value in parts:
        mask[rows, cols] = value
    return mask


def burn(labels: Path, grid: Grid, tmp_path: Path, **options) -> np.ndarray:
    out = tmp_path / "mask.tif"
    rasterize_labels(labels, grid, out, **options)
    with rasterio.open(out) as src:
        assert src.crs == grid.crs and src.transform == grid.transform and src.nodata == IGNORE
        return src.read(1)


def test_a_polygon_in_the_scene_crs_and_in_wgs84_lands_on_exactly_its_pixels(grid, tmp_path):
    box = pixel_box(grid, ROWS, COLS)
    in_utm = write_polygons(tmp_path / "utm.gpkg", [box], "EPSG:32629", kind=["roof"])
    in_wgs84 = write_polygons(tmp_path / "wgs84.geojson", [to_crs(box, grid.crs, "EPSG:4326")], "EPSG:4326",
                              kind=["roof"])  # fmt: skip
    want = expected(grid, (ROWS, COLS, 1))
    np.testing.assert_array_equal(burn(in_utm, grid, tmp_path), want)
    np.testing.assert_array_equal(burn(in_wgs84, grid, tmp_path), want)
    # all_touched takes the pixels the (reprojected, slightly curved) edges touch too: a ring at most
    touched = burn(in_wgs84, grid, tmp_path, all_touched=True)
    assert (touched[want == 1] == 1).all() and touched.sum() < want.sum() + 2 * (30 + 40 + 2)


def test_attribute_values_and_burn_order_by_area_put_small_polygons_on_top(grid, tmp_path):
    small_rows, small_cols = slice(60, 70), slice(110, 120)
    big, small = pixel_box(grid, ROWS, COLS), pixel_box(grid, small_rows, small_cols)
    labels = write_polygons(tmp_path / "l.gpkg", [small, big], "EPSG:32629", cover=["cloud", "land"])
    values = {"land": 1, "cloud": 2}
    by_file = burn(labels, grid, tmp_path, attribute="cover", values=values)
    np.testing.assert_array_equal(by_file, expected(grid, (ROWS, COLS, 1)))  # the big one, drawn last, hides it
    by_area = burn(labels, grid, tmp_path, attribute="cover", values=values, order="area")
    np.testing.assert_array_equal(by_area, expected(grid, (ROWS, COLS, 1), (small_rows, small_cols, 2)))
    by_value = burn(labels, grid, tmp_path, attribute="cover", values=values, order="attribute")
    np.testing.assert_array_equal(by_value, by_area)


def test_ignore_band_marks_pixels_along_the_edges(grid, tmp_path):
    labels = write_polygons(tmp_path / "l.shp", [pixel_box(grid, ROWS, COLS)], "EPSG:32629", id=[1])
    mask = burn(labels, grid, tmp_path, ignore_edge=2)
    # centres within 2 pixels of an edge, on either side: 2 pixels in, 2 out
    want = expected(grid, (slice(48, 82), slice(98, 142), IGNORE), (slice(52, 78), slice(102, 138), 1))
    want[[48, 48, 81, 81], [98, 141, 98, 141]] = 0  # outer corners: centres 2.1 pixels from the corner point
    np.testing.assert_array_equal(mask, want)


def test_the_committed_cloud_polygons_rebuild_the_cloud_mask(grid, tmp_path):
    """masks/t29unu_cloud.geojson was traced from masks/t29unu_cloud.tif: burning it back gives its cloud."""
    mask = burn(CLOUD_GEOJSON, grid, tmp_path, attribute="class", values={"cloud": 1})
    with rasterio.open(CLOUD_TIF) as src:
        truth = src.read(1)
    labelled = truth != IGNORE
    assert ((mask == 1) == (truth == 1))[labelled].mean() > 0.999


def test_an_attribute_that_does_not_exist_is_refused_listing_those_that_do(grid, tmp_path):
    with pytest.raises(PrepareError, match=r"no attribute 'label'.*\['class'\]"):
        rasterize_labels(CLOUD_GEOJSON, grid, tmp_path / "m.tif", attribute="label")


def test_text_values_without_a_mapping_are_refused(grid, tmp_path):
    with pytest.raises(PrepareError, match=r"attribute 'class' holds 'cloud'.*values: \{cloud: 1"):
        rasterize_labels(CLOUD_GEOJSON, grid, tmp_path / "m.tif", attribute="class")


def test_labels_off_the_scene_are_refused_with_both_extents(grid, tmp_path):
    far = write_polygons(tmp_path / "far.geojson", [shapely.box(10.0, 45.0, 10.1, 45.1)], "EPSG:4326", id=[1])
    with pytest.raises(PrepareError, match=r"far.geojson .* do not overlap the grid \(512 × 320 pixels, EPSG:32629"):
        rasterize_labels(far, grid, tmp_path / "m.tif")


def test_a_grid_from_an_extent_and_resolution(tmp_path):
    grid = Grid.from_extent((545100.0, 5856840.0, 545700.0, 5857440.0), 10.0, "EPSG:32629")
    assert (grid.width, grid.height) == (60, 60)
    box = shapely.box(545200.0, 5857000.0, 545300.0, 5857100.0)
    labels = write_polygons(tmp_path / "l.gpkg", [box], "EPSG:32629", id=[1])
    mask = burn(labels, grid, tmp_path)
    np.testing.assert_array_equal(np.argwhere(mask == 1).min(0), [34, 10])
    assert mask.sum() == 100
