"""The patches step: a scene labelled by a class raster on its grid → a patch set a classify job reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.prepare.conftest import ROOT, SAMPLE
from torchbearer.ml.scl_patches import CLASSES
from torchbearer.prepare import PrepareError
from torchbearer.prepare.patches import window_classes
from torchbearer.prepare.pipeline import Chain, Runner
from torchbearer.prepare.spec import Step

SCL = next(SAMPLE.glob("GRANULE/*/IMG_DATA/R60m/*_SCL_60m.jp2"))
COMMITTED = ROOT / "data" / "patches" / "t29unu-scl"


def _runner(tmp_path: Path) -> Runner:
    return Runner(resolve=lambda p: (ROOT / p).resolve(), data_dir=tmp_path / "data", resolution=60)


def test_majority_and_purity_decide_a_window_and_no_data_leaves_it_out() -> None:
    labels = np.array([[4, 4, 6, 6], [4, 8, 6, 6], [0, 4, 8, 9], [4, 4, 8, 10]], dtype=np.uint8)
    found = window_classes(labels, 2, {"vegetation": [4], "water": [6], "cloud": [8, 9, 10]}, 0.75, nodata=0)
    assert found == {(0, 0): "vegetation", (0, 2): "water", (2, 2): "cloud"}  # (2, 0) holds no data
    # at purity 1 only the pure windows stay: (0, 0) holds one 8 among its vegetation
    assert window_classes(labels, 2, {"vegetation": [4], "water": [6], "cloud": [8, 9, 10]}, 1.0, nodata=0) == {
        (0, 2): "water",
        (2, 2): "cloud",
    }


def test_patches_step_cuts_the_committed_patch_set_from_the_scene_and_its_scl(tmp_path: Path) -> None:
    step = Step.model_validate(
        {
            "patches": {
                "labels": str(SCL.relative_to(ROOT)),
                "output": str(tmp_path / "p"),
                "classes": {k: list(v) for k, v in CLASSES.items()},
                "label_nodata": 0,
            }
        }
    )
    chain = _runner(tmp_path).run([step], Chain(scene=_runner(tmp_path).scene(str(SAMPLE.relative_to(ROOT)))))
    made = sorted(p.relative_to(tmp_path / "p") for p in (tmp_path / "p").rglob("*.tif"))
    assert made == sorted(p.relative_to(COMMITTED) for p in COMMITTED.rglob("*.tif"))  # the classify data set
    assert chain.outputs == [(tmp_path / "p", "patches")]
    first = made[0]
    with rasterio.open(tmp_path / "p" / first) as new, rasterio.open(COMMITTED / first) as old:
        assert np.array_equal(new.read(), old.read()) and new.transform == old.transform and new.crs == old.crs
        assert new.descriptions == old.descriptions and new.tags()["VALUE_DOMAIN"] == "dn"


def test_a_class_raster_off_the_scene_grid_is_refused(tmp_path: Path, scene: Path) -> None:
    with rasterio.open(scene) as src:
        profile = {**src.profile, "count": 1, "dtype": "uint8", "nodata": None, "width": src.width // 2}
    other = tmp_path / "half.tif"
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(np.full((1, profile["height"], profile["width"]), 4, np.uint8))
    step = Step.model_validate({"patches": {"labels": str(other), "output": str(tmp_path / "p"),
                                            "classes": {"a": [4], "b": [6]}}})  # fmt: skip
    with pytest.raises(PrepareError, match=r"class raster .*half\.tif .* is not on the grid of scene"):
        _runner(tmp_path).run([step], Chain(scene=scene))
