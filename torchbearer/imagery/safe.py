"""Reading an unpacked Sentinel-2 SAFE product: its metadata and where each band's file is.

``MTD_MSIL2A.xml`` (or ``MTD_MSIL1C.xml``) gives the processing baseline, the quantification value and the
offset added to DN before dividing (``BOA_ADD_OFFSET``, -1000 from baseline 04.00 on, absent before), and lists
every image file. Reflectance = (DN + offset) / quantification; DN 0 is no data.

The bands stacked at a resolution are those of :data:`~torchbearer.imagery.spec.BANDS_BY_RESOLUTION` that the
product lists at that resolution: before baseline 04.00 an L2A ``R20m`` folder has no B01, so a 20 m stack of
such a product has 9 bands.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from torchbearer.imagery.spec import BANDS_BY_RESOLUTION

#: Quantification of L2A/L1C reflectance (the value every product so far states).
DEFAULT_QUANTIFICATION = 10000.0
#: ``…/IMG_DATA/R20m/T29UNU_20221005T115411_B8A_20m`` (L2A) or ``…/IMG_DATA/T46RER_20210908T042701_B8A`` (L1C)
_IMAGE_FILE = re.compile(r"IMG_DATA/(?:R(?P<folder>\d+)m/)?[^/]+_(?P<band>[A-Z0-9]{3})(?:_(?P<res>\d+)m)?$")


class SafeError(ValueError):
    """A SAFE product cannot be read (names the file and what is missing or wrong)."""


def band_name(physical: str) -> str:
    """``B1`` → ``B01``, ``B8A`` → ``B8A`` (metadata spells bands without the zero, file names with it)."""
    return physical if len(physical) == 3 else f"B{int(physical[1:]):02d}"


@dataclass(frozen=True)
class SafeProduct:
    """An unpacked SAFE product.

    ``offsets`` maps band names (``B01`` …) to the DN offset (``BOA_ADD_OFFSET`` for L2A, ``RADIO_ADD_OFFSET``
    for L1C; 0 when the metadata has none), ``images`` maps (band, resolution in metres) to the file path.
    A band of an L1C product is listed at its native resolution.
    """

    path: Path
    name: str
    level: str
    baseline: str
    quantification: float
    offsets: dict[str, int]
    images: dict[tuple[str, int], Path]

    def bands(self, resolution: int) -> tuple[str, ...]:
        """Spectral bands stacked at ``resolution`` metres, in stack order (e.g. no B01 at 20 m before 04.00)."""
        if resolution not in BANDS_BY_RESOLUTION:
            raise SafeError(f"{self.name}: no stack at {resolution} m (choose 10, 20 or 60)")
        wanted = BANDS_BY_RESOLUTION[resolution]
        if self.level == "L1C":  # one file per band: any band can be resampled to any resolution
            return wanted
        return tuple(b for b in wanted if (b, resolution) in self.images)

    def band_file(self, band: str, resolution: int) -> Path:
        """The image file to read ``band`` from for a stack at ``resolution`` metres."""
        path = self.images.get((band, resolution))
        if path is None and self.level == "L1C":
            path = next((p for (b, _), p in self.images.items() if b == band), None)
        if path is None:
            raise SafeError(f"{self.name}: {MTD_NAMES[self.level]} lists no {band} file at {resolution} m")
        return path

    def offset(self, band: str) -> int:
        """The DN offset of ``band`` (``BOA_ADD_OFFSET``; 0 before baseline 04.00)."""
        return self.offsets.get(band, 0)


MTD_NAMES = {"L2A": "MTD_MSIL2A.xml", "L1C": "MTD_MSIL1C.xml"}


def _text(root: ET.Element, tag: str) -> str | None:
    node = next(root.iter(tag), None)
    return node.text.strip() if node is not None and node.text else None


def read_safe(path: Path) -> SafeProduct:
    """Read the product metadata of the SAFE folder ``path``.

    Raises:
        SafeError: no product metadata file, or one that is not valid XML or lacks the baseline.
    """
    path = Path(path)
    mtd = next((path / n for n in MTD_NAMES.values() if (path / n).is_file()), None)
    if mtd is None:
        raise SafeError(f"{path}: no MTD_MSIL2A.xml or MTD_MSIL1C.xml: not an unpacked SAFE product")
    level = "L2A" if mtd.name == MTD_NAMES["L2A"] else "L1C"
    try:
        root = ET.parse(mtd).getroot()
    except ET.ParseError as exc:
        raise SafeError(f"{mtd}: not valid XML ({exc})") from None
    baseline = _text(root, "PROCESSING_BASELINE")
    if baseline is None:
        raise SafeError(f"{mtd}: no PROCESSING_BASELINE")
    quantification = _text(root, "BOA_QUANTIFICATION_VALUE") or _text(root, "QUANTIFICATION_VALUE")

    # Offsets are listed by band index; Spectral_Information maps the index to the physical band.
    physical = {
        node.get("bandId"): band_name(node.get("physicalBand", ""))
        for node in root.iter("Spectral_Information")
        if node.get("physicalBand")
    }
    offsets = {}
    for tag in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"):
        for node in root.iter(tag):
            band = physical.get(node.get("band_id"))
            if band is not None and node.text:
                offsets[band] = int(float(node.text))

    images: dict[tuple[str, int], Path] = {}
    for node in root.iter("IMAGE_FILE"):
        match = _IMAGE_FILE.search((node.text or "").strip())
        if match is None:
            continue
        res = match.group("folder") or match.group("res")
        images[(match.group("band"), int(res) if res else 0)] = path / f"{node.text.strip()}.jp2"
    if not images:
        raise SafeError(f"{mtd}: lists no image files (IMAGE_FILE)")
    name = _text(root, "PRODUCT_URI") or path.name
    return SafeProduct(
        path=path,
        name=name.removesuffix(".SAFE"),
        level=level,
        baseline=baseline,
        quantification=float(quantification) if quantification else DEFAULT_QUANTIFICATION,
        offsets=offsets,
        images=images,
    )
