"""``manifest.safe``: the file list of a SAFE product, with each file's size (bytes) and checksum.

Sentinel-2 manifests name every file of the product under ``dataObjectSection`` with a SHA3-256 checksum
(products from 2022 on) or an MD5 (older ones). Fetching checks each file against it; :func:`verify_product`
checks a whole folder and reports files listed but absent as *missing* instead of failing on them.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

#: Checksum names used in manifests → hashlib constructor names.
_ALGORITHMS = {"SHA3-256": "sha3_256", "MD5": "md5", "SHA-256": "sha256", "SHA256": "sha256"}
_CHUNK = 1024 * 1024


class ManifestError(ValueError):
    """A manifest.safe that cannot be used (names the file and what is wrong)."""


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a product: its path relative to the SAFE folder, size in bytes, and checksum."""

    path: str
    size: int | None
    algorithm: str | None
    checksum: str | None

    def hasher(self) -> hashlib._Hash | None:
        """A fresh hash object for this entry's algorithm (None if the manifest gives no known checksum)."""
        if self.algorithm is None or self.algorithm not in _ALGORITHMS:
            return None
        return hashlib.new(_ALGORITHMS[self.algorithm])

    def matches(self, digest: str) -> bool:
        """Whether a hex digest equals the manifest's (case-insensitive; true when there is nothing to check)."""
        return self.checksum is None or digest.lower() == self.checksum.lower()


@dataclass(frozen=True)
class Manifest:
    """The parsed file list of one product."""

    entries: tuple[ManifestEntry, ...]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def total_size(self) -> int:
        """Bytes of every file listed (the product unzipped), not counting manifest.safe itself."""
        return sum(e.size or 0 for e in self.entries)


@dataclass
class VerifyReport:
    """Outcome of checking a product folder against its manifest: relative paths by result."""

    ok: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.mismatched and not self.missing


def _clean(href: str) -> str:
    return str(PurePosixPath(href.strip().removeprefix("./")))


def parse_manifest(data: bytes | str, source: str = "manifest.safe") -> Manifest:
    """Parse manifest XML; ``source`` names it in errors. Paths that climb out of the product are refused."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ManifestError(f"{source}: not valid XML ({exc})") from None
    entries = []
    for stream in root.iter():
        if not stream.tag.endswith("byteStream"):
            continue
        location = next((c for c in stream if c.tag.endswith("fileLocation")), None)
        if location is None or not location.get("href"):
            continue
        path = _clean(location.get("href", ""))
        if path.startswith("/") or ".." in PurePosixPath(path).parts:
            raise ManifestError(f"{source}: file path {path!r} leaves the product folder")
        checksum = next((c for c in stream if c.tag.endswith("checksum")), None)
        size = stream.get("size")
        entries.append(
            ManifestEntry(
                path=path,
                size=int(size) if size and size.isdigit() else None,
                algorithm=checksum.get("checksumName", "").upper() if checksum is not None else None,
                checksum=(checksum.text or "").strip() or None if checksum is not None else None,
            )
        )
    if not entries:
        raise ManifestError(f"{source}: lists no files (is it a SAFE manifest?)")
    return Manifest(tuple(entries))


def read_manifest(safe_dir: Path) -> Manifest:
    """The manifest of an unpacked SAFE product folder."""
    path = safe_dir / "manifest.safe"
    if not path.is_file():
        raise ManifestError(f"{path}: missing (not a SAFE product folder?)")
    return parse_manifest(path.read_bytes(), str(path))


def file_digest(path: Path, entry: ManifestEntry) -> str | None:
    """Hex digest of a file with the entry's algorithm (None if the entry has no usable checksum)."""
    hasher = entry.hasher()
    if hasher is None:
        return None
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def check_file(path: Path, entry: ManifestEntry) -> bool:
    """Whether a file has the entry's size and checksum."""
    if entry.size is not None and path.stat().st_size != entry.size:
        return False
    digest = file_digest(path, entry)
    return digest is None or entry.matches(digest)


def verify_product(safe_dir: Path, paths: Iterable[str] | None = None) -> VerifyReport:
    """Check the files of a SAFE folder (all listed, or only ``paths``) against its manifest."""
    manifest = read_manifest(safe_dir)
    wanted = None if paths is None else {_clean(p) for p in paths}
    report = VerifyReport()
    for entry in manifest:
        if wanted is not None and entry.path not in wanted:
            continue
        target = safe_dir / entry.path
        if not target.is_file():
            report.missing.append(entry.path)
        elif check_file(target, entry):
            report.ok.append(entry.path)
        else:
            report.mismatched.append(entry.path)
    return report


#: Resolution folder and band tag of an L2A image file, e.g. ``R60m/T29UNU_…_B8A_60m.jp2``.
_L2A_IMAGE = re.compile(r"/IMG_DATA/R(\d+)m/[^/]*_([A-Z0-9]{3})_(\d+)m\.jp2$")
#: Band tag of an L1C image file, e.g. ``IMG_DATA/T29UNU_…_B8A.jp2``.
_L1C_IMAGE = re.compile(r"/IMG_DATA/[^/]*_(B[0-9A]{2})\.jp2$")
_METADATA = re.compile(r"^(MTD_MSIL[12][AC]\.xml|GRANULE/[^/]+/MTD_TL\.xml)$")


def needed_files(manifest: Manifest, bands: Iterable[str], resolution: int) -> list[ManifestEntry]:
    """The entries a stack at ``resolution`` metres needs: its bands, SCL, and the product/tile metadata.

    L2A products hold every band at each of its resolution folders; the SCL layer comes from the same folder,
    or from R20m for a 10 m stack (there is no 10 m SCL). L1C products have one file per band at its native
    resolution, so those files are taken whatever ``resolution`` is.
    """
    bands = set(bands)
    scl_resolution = 20 if resolution == 10 else resolution
    chosen = []
    for entry in manifest:
        l2a = _L2A_IMAGE.search("/" + entry.path)
        l1c = _L1C_IMAGE.search("/" + entry.path)
        if _METADATA.match(entry.path):
            chosen.append(entry)
        elif l2a:
            folder, band = int(l2a.group(1)), l2a.group(2)
            if (folder == resolution and band in bands) or (band == "SCL" and folder == scl_resolution):
                chosen.append(entry)
        elif l1c and l1c.group(1) in bands:
            chosen.append(entry)
    return chosen
