"""``torchbearer prepare <step>`` in the foreground: the same steps, paths from the current folder."""

from __future__ import annotations

import numpy as np
import rasterio

from tests.cli.conftest import flat, tb
from tests.prepare.conftest import CLOUD_GEOJSON, CLOUD_TIF, SAMPLE


def test_prepare_rasterize_then_chip_a_safe_folder_from_the_command_line(project, tmp_path):
    mask = tmp_path / "cloud.tif"
    result = tb("prepare", "rasterize", CLOUD_GEOJSON, "--scene", SAMPLE, "--resolution", "60",
                "--attribute", "class", "--value", "cloud=1", "-o", mask)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(mask)
    with rasterio.open(mask) as made, rasterio.open(CLOUD_TIF) as truth:
        labelled = truth.read(1) != 255
        assert ((made.read(1) == 1) == (truth.read(1) == 1))[labelled].mean() > 0.999
    result = tb("prepare", "chip", SAMPLE, "--resolution", "60", "--mask", mask, "--size", "128", "-o",
                tmp_path / "chips")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "chips of 128² px (dn, no data 0)" in flat(result.stderr)
    assert len(list((tmp_path / "chips" / "train_masks").glob("train_*.tif"))) > 0


def test_prepare_reports_bad_input_without_a_traceback(project, tmp_path):
    result = tb("prepare", "rasterize", CLOUD_GEOJSON, "--scene", SAMPLE, "--resolution", "60",
                "--attribute", "kind", "-o", tmp_path / "m.tif")  # fmt: skip
    assert result.returncode == 1
    assert "rasterize failed: labels" in flat(result.stderr) and "no attribute 'kind' (they have ['class'])" in flat(
        result.stderr
    )
    assert "Traceback" not in result.stderr
    result = tb("prepare", "chip", SAMPLE, "--size", "64", "--overlap", "64", "-o", tmp_path / "c")
    assert result.returncode == 2 and "overlap 64 must be below the chip size 64" in flat(result.stderr)
    assert not np.any([p.exists() for p in [tmp_path / "m.tif", tmp_path / "c"]])
