"""manifest.safe parsing, per-file checks, and the choice of the files a stack needs."""

from __future__ import annotations

import pytest

from tests.imagery.conftest import copy_product
from tests.imagery.fake_services import DATA
from torchbearer.imagery.manifest import (
    ManifestError,
    needed_files,
    parse_manifest,
    read_manifest,
    verify_product,
)
from torchbearer.imagery.spec import BANDS_BY_RESOLUTION


def test_sha3_sample_verifies_and_reports_missing(sample_safe):
    report = verify_product(sample_safe)
    # The crop holds the R60m bands + SCL and metadata; R10m/R20m/QI files are listed but absent.
    assert len(report.ok) == 14 and not report.mismatched
    assert any(p.endswith("_B02_10m.jp2") for p in report.missing)
    assert any(p.startswith("DATASTRIP/") for p in report.missing)
    assert not report.complete


def test_damaged_file_is_a_mismatch(sample_safe, tmp_path):
    safe = copy_product(sample_safe, tmp_path)
    band = next(safe.glob("GRANULE/*/IMG_DATA/R60m/*_B04_60m.jp2"))
    data = bytearray(band.read_bytes())
    data[1000] ^= 0xFF
    band.write_bytes(bytes(data))
    report = verify_product(safe)
    assert report.mismatched == [str(band.relative_to(safe))]


def test_md5_manifest_and_needed_files_before_baseline_4():
    manifest = parse_manifest((DATA / "manifest.safe.S2_MSI_L2A").read_bytes())
    assert {e.algorithm for e in manifest if e.checksum} == {"MD5"}
    chosen = [e.path.rsplit("/", 1)[-1] for e in needed_files(manifest, BANDS_BY_RESOLUTION[20], 20)]
    # R20m of a 2021 product has no B01: the stack takes what the manifest has.
    assert not any("_B01_" in name for name in chosen)
    assert sum("_20m.jp2" in name for name in chosen) == 9 + 1  # nine bands and SCL
    assert {"MTD_MSIL2A.xml", "MTD_TL.xml"} <= set(chosen)


def test_needed_files_at_60m_and_10m(sample_safe):
    manifest = read_manifest(sample_safe)
    at60 = [e.path for e in needed_files(manifest, BANDS_BY_RESOLUTION[60], 60)]
    assert len(at60) == 11 + 1 + 2 and all("R60m" in p for p in at60 if p.endswith(".jp2"))
    at10 = [e.path.rsplit("/", 1)[-1] for e in needed_files(manifest, BANDS_BY_RESOLUTION[10], 10)]
    assert sorted(n for n in at10 if n.endswith(".jp2")) == [
        "T29UNU_20221005T115411_B02_10m.jp2", "T29UNU_20221005T115411_B03_10m.jp2",
        "T29UNU_20221005T115411_B04_10m.jp2", "T29UNU_20221005T115411_B08_10m.jp2",
        "T29UNU_20221005T115411_SCL_20m.jp2",
    ]  # fmt: skip
    assert manifest.total_size > 500_000_000  # the full product, as listed


def test_l1c_manifest_takes_native_band_files():
    manifest = parse_manifest((DATA / "tests_download_mock_sentinel_2_manifest.safe").read_bytes())
    chosen = [e.path for e in needed_files(manifest, BANDS_BY_RESOLUTION[60], 60)]
    assert sum(p.endswith(".jp2") for p in chosen) == 11 and any(p.endswith("MTD_MSIL1C.xml") for p in chosen)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"<not xml", "not valid XML"),
        (b"<xfdu/>", "lists no files"),
        (
            b'<x><byteStream size="1"><fileLocation href="../../etc/passwd"/></byteStream></x>',
            "leaves the product folder",
        ),
    ],
)
def test_bad_manifests(text, message):
    with pytest.raises(ManifestError, match=message):
        parse_manifest(text)
