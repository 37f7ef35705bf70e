"""Fixtures of the imagery tests: the sample SAFE product served by real local CDSE / Earth Search servers."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.imagery.fake_services import FakeServices, Product, build_catalogue, footprint

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_NAME = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
SAMPLE_ID = "5f1b5c3e-9a7d-4e0b-8c1d-0a2b3c4d5e6f"
#: Inside the sample crop (lon -8.33..-7.87, lat 52.86..53.03): lon/lat bbox.
SAMPLE_AOI = [-8.2, 52.9, -8.0, 53.0]


@pytest.fixture(scope="session")
def sample_safe() -> Path:
    """The committed real SAFE crop (R60m bands + SCL + metadata)."""
    path = ROOT / "data" / SAMPLE_NAME
    assert path.is_dir(), f"sample product missing: {path}"
    return path


@pytest.fixture
def services(sample_safe: Path) -> Iterator[FakeServices]:
    """Fresh fake CDSE + Earth Search servers (no faults) serving the sample as product ``SAMPLE_ID``."""
    product = Product(SAMPLE_ID, SAMPLE_NAME, sample_safe)
    catalogue = build_catalogue([(product, 61.5, 1_035_000_000, footprint(sample_safe))])
    with FakeServices([product], catalogue) as fake:
        yield fake


@pytest.fixture
def env(services: FakeServices, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str | None]:
    """A variable lookup (like ``ctx.secret``) pointing at the fake services; loopback never goes via a proxy."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,127.0.0.2,localhost")
    values = dict(services.env)
    return values.get


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def copy_product(src: Path, dst: Path) -> Path:
    """A writable copy of a SAFE folder (tests that damage files)."""
    return Path(shutil.copytree(src, dst / src.name))
