"""Ensemble prediction on the real crop in data/: grid, constants, means, no data, edges, resolutions, errors,
resume."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from tests.inference.conftest import (
    card_for,
    constant_member,
    crop_stack,
    expected_constant,
    nodata_of,
    save_checkpoint,
)
from torchbearer.inference.ensemble import PredictionInterrupted, PredictOptions, predict_scene
from torchbearer.inference.members import EnsembleError, Member
from torchbearer.inference.resume import is_complete
from torchbearer.inference.writer import NODATA, partial_path
from torchbearer.ml.checkpoint import CheckpointError
from torchbearer.ml.members import load_member


def member_from(path: Path, name: str) -> Member:
    model, card = load_member(path)
    return Member(name=name, model=model, card=card, source=str(path))


@pytest.fixture(scope="module")
def checkpoints(stack60: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    # Two U-Nets with a small backbone (FCN's full-resolution layers are slow on a CPU; the benchmark runs it).
    return {
        "a": save_checkpoint(folder / "unet-a.ckpt", card_for(stack60, "unet", "resnet18"), seed=1),
        "b": save_checkpoint(folder / "unet-b.ckpt", card_for(stack60, "unet", "resnet18"), seed=2),
    }


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), {"crs": ds.crs, "transform": ds.transform, "shape": ds.shape, "nodata": ds.nodata,
                           "tags": ds.tags(), "overviews": ds.overviews(1), "block": ds.block_shapes[0],
                           "compression": ds.compression, "scales": ds.scales}  # fmt: skip


def test_output_has_the_input_grid_and_is_a_cog(stack60: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    predict_scene([constant_member(stack60, 0.4)], [stack60], out, PredictOptions(window=128, batch_size=4))
    _, meta = read(out)
    with rasterio.open(stack60) as src:
        assert (meta["crs"], meta["transform"], meta["shape"]) == (src.crs, src.transform, src.shape)
    assert meta["nodata"] == NODATA and meta["block"] == (256, 256) and meta["compression"] is not None
    assert meta["overviews"], "a COG has overviews"
    assert meta["scales"] == (pytest.approx(1 / 254),)
    assert meta["tags"]["TORCHBEARER_COMBINE"] == "mean" and "constant" in meta["tags"]["TORCHBEARER_MODELS"]
    assert meta["tags"]["TORCHBEARER_CREATED"]
    with rasterio.open(out) as ds:
        assert ds.profile["tiled"] and "LAYOUT=COG" in " ".join(
            f"{k}={v}" for k, v in ds.tags(ns="IMAGE_STRUCTURE").items()
        )
    assert not partial_path(out).exists() and not list(tmp_path.glob("*.resume.json"))


@pytest.mark.parametrize("tta", ["none", "d4"])
def test_constant_model_gives_that_constant_everywhere_and_no_data_stays(
    stack60: Path, tmp_path: Path, tta: str
) -> None:
    out = tmp_path / "const.tif"
    # window 128, overlap 0.5: many overlaps and a stride that does not divide 320 × 512
    predict_scene([constant_member(stack60, 0.4)], [stack60], out, PredictOptions(window=128, overlap=0.5, tta=tta))
    data, _ = read(out)
    wedge = nodata_of(stack60)
    assert wedge.any() and (~wedge).any()
    assert (data[0][wedge] == NODATA).all(), "no-data input stays no data"
    assert (data[0][~wedge] == expected_constant(0.4)).all(), "blending weights normalise: no seams"


@pytest.mark.parametrize(("rows", "cols"), [(100, 150), (300, 417)])
def test_small_scene_and_stride_that_does_not_divide(stack60: Path, tmp_path: Path, rows: int, cols: int) -> None:
    stack = crop_stack(stack60, tmp_path / f"crop_{rows}x{cols}.tif", Window(100, 10, cols, rows))
    out = tmp_path / "out.tif"
    predict_scene([constant_member(stack, -1.3)], [stack], out, PredictOptions(window=256, overlap=0.25))
    data, meta = read(out)
    with rasterio.open(stack) as src:
        assert (meta["transform"], meta["shape"]) == (src.transform, (rows, cols))
    wedge = nodata_of(stack)
    assert (data[0][~wedge] == expected_constant(-1.3)).all() and (data[0][wedge] == NODATA).all()


def test_mean_of_two_members_is_the_mean_of_their_maps(part60: Path, checkpoints: dict, tmp_path: Path) -> None:
    members = [member_from(checkpoints["a"], "a"), member_from(checkpoints["b"], "b")]
    out = tmp_path / "ens.tif"
    result = predict_scene(
        members, [part60], out, PredictOptions(window=64, member_maps=True, class_map=True, optimize=False)
    )
    ens, _ = read(out)
    map_a, _ = read(result.member_maps["a"])
    map_b, _ = read(result.member_maps["b"])
    alone, _ = read(predict_scene([member_from(checkpoints["a"], "a")], [part60], tmp_path / "a.tif",
                                  PredictOptions(window=64, optimize=False)).output)  # fmt: skip
    valid = ens[0] != NODATA
    assert np.array_equal(alone, map_a), "a member's map in the ensemble is its single-model map"
    assert np.abs(ens[0][valid] - (map_a[0][valid].astype(float) + map_b[0][valid]) / 2).max() <= 1.0  # uint8 rounding
    assert (map_a[0] != map_b[0])[valid].mean() > 0.5, "the two members differ: the test means something"
    classes, _ = read(result.class_map)
    assert set(np.unique(classes[0][valid])) <= {0, 1} and (classes[0][~valid] == NODATA).all()
    assert result.windows == 3 * 4  # 128 × 192 in windows of 64 every 48 pixels


def test_members_at_20_m_and_60_m(small60: Path, stack20: Path, checkpoints: dict, tmp_path: Path) -> None:
    fine = save_checkpoint(tmp_path / "unet20.ckpt", card_for(stack20, "unet", "resnet18"), seed=3)
    members = [member_from(checkpoints["b"], "unet60"), member_from(fine, "unet20")]
    out = tmp_path / "multi.tif"
    result = predict_scene(
        members, [small60, stack20], out, PredictOptions(window=128, member_maps=True, optimize=False)
    )
    ens, meta = read(out)
    with rasterio.open(stack20) as src:
        assert (meta["transform"], meta["shape"]) == (src.transform, src.shape), "the finest member's grid"
    coarse, _ = read(result.member_maps["unet60"])
    fine_map, _ = read(result.member_maps["unet20"])
    valid = ens[0] != NODATA
    assert np.abs(ens[0][valid] - (coarse[0][valid].astype(float) + fine_map[0][valid]) / 2).max() <= 1.0
    # The 60 m member's map, resampled onto the 20 m grid, agrees with its own 60 m prediction at the centre
    # pixel of each 3 × 3 block (bilinear interpolation passes through the coarse pixel centres).
    alone, _ = read(predict_scene([member_from(checkpoints["b"], "unet60")], [small60], tmp_path / "u.tif",
                                  PredictOptions(window=128, optimize=False)).output)  # fmt: skip
    centres = coarse[0][1::3, 1::3]
    both = (centres != NODATA) & (alone[0] != NODATA)
    assert np.abs(centres[both].astype(int) - alone[0][both]).max() <= 1
    assert (ens[0][nodata_of(stack20)] == NODATA).all(), "the wedge stays no data on the 20 m grid"


def test_two_constant_members_at_two_resolutions_average_exactly(small60: Path, stack20: Path, tmp_path: Path) -> None:
    members = [
        constant_member(small60, 0.4, "c60"),
        Member("c20", constant_member(stack20, -1.3).model, card_for(stack20)),
    ]
    out = tmp_path / "c.tif"
    predict_scene(members, [stack20, small60], out, PredictOptions(window=128))
    data, _ = read(out)
    p = (torch.sigmoid(torch.tensor(0.4)) + torch.sigmoid(torch.tensor(-1.3))).item() / 2
    wedge = nodata_of(stack20)
    assert (data[0][~wedge] == int(np.rint(p * 254))).all()


def test_incompatible_member_is_refused_before_any_work(stack60: Path, checkpoints: dict, tmp_path: Path) -> None:
    other = save_checkpoint(tmp_path / "three.ckpt", card_for(stack60, "fcn", classes=("land", "water", "cloud")))
    members = [member_from(checkpoints["a"], "a"), member_from(other, "three")]
    out = tmp_path / "never.tif"
    with pytest.raises(EnsembleError, match=r"'a' and 'three' are incompatible.*\['land', 'water', 'cloud'\]"):
        predict_scene(members, [stack60], out)
    assert list(tmp_path.glob("never*")) == []


def test_member_needing_a_missing_resolution_or_band_is_refused(stack60: Path, stack20: Path, tmp_path: Path) -> None:
    member = Member("fine", constant_member(stack20, 0.0).model, card_for(stack20))
    with pytest.raises(EnsembleError, match="needs the scene at 20 m; the inputs are at 60 m"):
        predict_scene([member], [stack60], tmp_path / "x.tif")


def test_corrupt_checkpoint_fails_with_a_clear_message(checkpoints: dict, tmp_path: Path) -> None:
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(checkpoints["a"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"broken\.ckpt: not a readable checkpoint"):
        load_member(broken)


def test_interrupted_prediction_resumes_to_the_same_bytes(part60: Path, checkpoints: dict, tmp_path: Path) -> None:
    options = PredictOptions(window=64, overlap=0.25, batch_size=4, class_map=True, optimize=False)
    whole = predict_scene([member_from(checkpoints["a"], "a")], [part60], tmp_path / "a" / "map.tif", options,
                          created=1.7e9)  # fmt: skip
    out = tmp_path / "b" / "map.tif"
    strips = []  # stop once the first strip is written, as a SIGTERM then would
    with pytest.raises(PredictionInterrupted) as stopped:
        predict_scene([member_from(checkpoints["a"], "a")], [part60], out, options, created=1.7e9,
                      report=lambda *progress: strips.append(progress), should_stop=lambda: bool(strips))  # fmt: skip
    assert stopped.value.rows_done == 32 and partial_path(out).exists()
    resumed = predict_scene([member_from(checkpoints["a"], "a")], [part60], out, options)
    assert resumed.resumed_from_row == 32
    for a, b in [(whole.output, resumed.output), (whole.class_map, resumed.class_map)]:
        assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    assert is_complete(out, [member_from(checkpoints["a"], "a")], [part60], options)


def test_optimized_forward_matches_the_eager_one(small60: Path, checkpoints: dict, tmp_path: Path) -> None:
    maps = []
    for optimize in (False, True):
        result = predict_scene([member_from(checkpoints["a"], "a")], [small60], tmp_path / f"{optimize}.tif",
                               PredictOptions(window=64, optimize=optimize))  # fmt: skip
        maps.append(read(result.output)[0].astype(int))
        assert isinstance(result.models[0], torch.fx.GraphModule) == optimize
    assert np.abs(maps[0] - maps[1]).max() <= 1  # batch norms folded into convolutions: float rounding only


def test_multiclass_members_give_a_band_per_class_and_a_class_map(small60: Path, tmp_path: Path) -> None:
    classes = ("land", "water", "cloud")
    paths = [save_checkpoint(tmp_path / f"m{i}.ckpt", card_for(small60, "unet", "resnet18", classes), seed=i)
             for i in range(2)]  # fmt: skip
    members = [member_from(p, f"m{i}") for i, p in enumerate(paths)]
    out = tmp_path / "multi.tif"
    result = predict_scene(members, [small60], out, PredictOptions(window=64, combine="vote", class_map=True,
                                                                   optimize=False))  # fmt: skip
    with rasterio.open(out) as ds:
        assert ds.count == 3 and ds.descriptions == classes
        votes = ds.read()
    valid = votes[0] != NODATA
    assert set(np.unique(votes[:, valid])) <= {0, 127, 254}, "two members vote: shares 0, 1/2, 1"
    assert (votes[:, valid].astype(int).sum(axis=0) == 254).all()
    class_map, _ = read(result.class_map)
    assert set(np.unique(class_map[0][valid])) <= {0, 1, 2} and (class_map[0][~valid] == NODATA).all()
