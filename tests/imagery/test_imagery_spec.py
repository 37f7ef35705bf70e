"""The imagery block: what it accepts, and the errors it gives for what it does not."""

from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from torchbearer.imagery.aoi import AoiError, load_aoi
from torchbearer.imagery.spec import ImagerySpec

BASE = {"aoi": [-8.2, 52.9, -8.0, 53.0], "dates": "2022-10-01/2022-10-10"}


def test_defaults_and_bands():
    spec = ImagerySpec(**BASE)
    assert (spec.source, spec.product, spec.resolution, spec.max_scenes, spec.pick) == (
        "copernicus", "L2A", 20, 1, "least-cloud"
    )  # fmt: skip
    assert spec.date_range == (date(2022, 10, 1), date(2022, 10, 10))
    assert ImagerySpec(**BASE, resolution=60).bands[-3:] == ("B09", "B11", "B12")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dates": "2022-10-10/2022-10-01"}, "ends before it starts"),
        ({"dates": "last week"}, "YYYY-MM-DD"),
        ({"aoi": [1, 2, 3]}, "needs 4 numbers"),
        ({"aoi": "1,2,3"}, "needs 4 numbers"),
        ({"aoi": [3, 2, 1, 4]}, "min < max"),
        ({"aoi": "POLYGON((0 0, 1 1"}, "not valid WKT"),
        ({"aoi": "areas/field.txt"}, "neither a bbox, WKT nor a vector file"),
        ({"resolution": 30}, "resolution"),
        ({"max_cloud": 120}, "max_cloud"),
        ({"tiles": ["29UN"]}, "not an MGRS tile"),
        ({"source": "earth-search", "product": "L1C"}, "earth-search serves L2A only"),
        ({"dates": None}, "needs dates"),
        ({"clouds": 10}, "clouds"),
    ],
)
def test_refused_with_a_reason(change, message):
    with pytest.raises(ValidationError, match=message):
        ImagerySpec(**(BASE | change))


def test_local_needs_paths_and_yaml_dates():
    with pytest.raises(ValidationError, match="needs paths"):
        ImagerySpec(source="local")
    assert ImagerySpec(source="local", paths=["data/"]).paths == ["data/"]
    assert ImagerySpec(**(BASE | {"dates": date(2022, 10, 5)})).date_range == (date(2022, 10, 5),) * 2
    assert ImagerySpec(**BASE, tiles=["t29unu"]).tiles == ["29UNU"]


def test_aoi_forms_agree(tmp_path):
    """A bbox, the same area as WKT, as a UTM bbox, and as a GeoJSON file in UTM all give one area."""
    reference = load_aoi(ImagerySpec(**BASE))
    wkt = "POLYGON((-8.2 52.9, -8.0 52.9, -8.0 53.0, -8.2 53.0, -8.2 52.9))"
    assert load_aoi(ImagerySpec(**(BASE | {"aoi": wkt}))).equals(reference)
    utm = load_aoi(ImagerySpec(**(BASE | {"aoi": "554000,5862000,567000,5873000", "aoi_crs": "EPSG:32629"})))
    assert utm.intersects(reference) and 0.5 < utm.area / reference.area < 1.5
    geojson = tmp_path / "area.geojson"
    geojson.write_text(
        '{"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:32629"}},'
        '"features": [{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates":'
        "[[[554000, 5862000], [567000, 5862000], [567000, 5873000], [554000, 5873000], [554000, 5862000]]]}}]}"
    )
    from_file = load_aoi(ImagerySpec(**(BASE | {"aoi": str(geojson)})))
    assert from_file.symmetric_difference(utm).area < 1e-12
    with pytest.raises(AoiError, match="does not exist"):
        load_aoi(ImagerySpec(**(BASE | {"aoi": str(tmp_path / "missing.gpkg")})))
    with pytest.raises(AoiError, match="not longitude/latitude"):
        load_aoi(ImagerySpec(**(BASE | {"aoi": [554000, 5862000, 567000, 5873000]})))


def test_download_job_file_errors_point_at_the_line():
    from torchbearer.spec import JobFileError, parse_job_text

    text = (
        "name: scenes\nkind: download\nimagery:\n"
        "  aoi: [-8.2, 52.9, -8.0, 53.0]\n  dates: 2022-10-01/2022-10-10\n  max_clouds: 10\n"
    )
    with pytest.raises(JobFileError) as error:
        parse_job_text(text, "scenes.yaml")
    message = str(error.value)
    assert "scenes.yaml:6" in message and "max_cloud" in message
    [job] = parse_job_text(text.replace("max_clouds", "max_cloud"), "scenes.yaml")
    assert job.spec.imagery.max_cloud == 10


def test_pick_scenes_dedupes_and_orders():
    from datetime import UTC, datetime

    from torchbearer.imagery.scenes import FoundScene, pick_scenes

    def scene(name: str, cloud: float | None, online: bool = True) -> FoundScene:
        sensed = datetime.strptime(name.split("_")[2], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        return FoundScene("copernicus", name, name, sensed, cloud, name.split("_")[5][1:], online=online)

    old = scene("S2A_MSIL2A_20220101T100000_N0400_R023_T29UNU_20220101T120000.SAFE", 5.0)
    reprocessed = scene("S2A_MSIL2A_20220101T100000_N0500_R023_T29UNU_20230601T120000.SAFE", 5.0)
    newer = scene("S2B_MSIL2A_20220301T100000_N0400_R023_T29UNU_20220301T120000.SAFE", 20.0)
    unknown = scene("S2B_MSIL2A_20220401T100000_N0400_R023_T29UNV_20220401T120000.SAFE", None)
    offline = scene("S2A_MSIL2A_20220501T100000_N0400_R023_T29UNU_20220501T120000.SAFE", 1.0, online=False)
    found = [old, newer, unknown, reprocessed, offline]
    assert pick_scenes(found, max_scenes=5, pick="least-cloud") == [reprocessed, newer, unknown]
    assert pick_scenes(found, max_scenes=2, pick="newest") == [unknown, newer]
    assert pick_scenes(found, max_scenes=5, pick="newest", tiles=["29UNV"]) == [unknown]
