"""The scene cache: a SAFE product's bands stacked once into one tiled, compressed GeoTIFF per resolution, and
what a reader needs to know of such a stack (:class:`StackInfo`: its grid, bands and reflectance terms).

Format (docs/architecture.md): ``<cache>/<product name>_<res>m.tif``, uint16 DN as in the product, one band
per spectral band named by its description (``B01`` …), nodata 0, tiles of 256² pixels, ZSTD compressed, tags
``BOA_ADD_OFFSET``, ``QUANTIFICATION_VALUE``, ``PRODUCT``, ``RESOLUTION`` and ``PROCESSING_BASELINE``.
Reflectance = (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE; DN 0 is no data.

A stack is built once: the builder holds an flock on ``<stack>.lock`` (two processes never build the same
stack; the second finds it done), writes ``<stack>.<pid>.part`` strip by strip and renames it when complete, so
a stack under its own name is never half a file. A prediction reads the decoded strips in memory while the
stack is written for the next run (:class:`StackBuild`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from torchbearer.imagery.grid import Grid
from torchbearer.imagery.safe import SafeError, read_safe
from torchbearer.imagery.spec import BANDS_BY_RESOLUTION
from torchbearer.locks import file_lock

log = logging.getLogger(__name__)

#: Threads decoding a product's bands when stacking it (one band each).
DECODE_THREADS = max(1, os.cpu_count() or 1)
#: Tile edge of a stack, pixels.
TILE = 256
#: Rows of every band decoded and written at a time while stacking (a row of tiles): the step at which a stack
#: being built becomes readable.
STRIP_ROWS = TILE
#: Decoded strips a :class:`StackBuild` holds for its reader (more only while the reader waits for rows not yet
#: decoded, e.g. a window taller than these): what bounds its memory, whatever the scene's height. Four 60 m
#: strips of the full T29UNU scene are 41 MB.
MEMORY_STRIPS = 4
#: Creation options of a stack: tiles for window reads, ZSTD (decodes about twice as fast as DEFLATE here)
#: with horizontal differencing, which suits smooth uint16 imagery. Level 1: a seventh of the default level 9's
#: CPU time to write (measured on the crop tiled to 960 × 1536: 0.16 s vs 1.19 s) for files 2 % larger, the same
#: time to read: stacking is on a first prediction's critical path, next to the JPEG 2000 decoding. GDAL applies
#: the level only to a dataset it creates: a file reopened for update ("r+") is written at level 9 whatever the
#: options say (1.8 s of CPU instead of 0.3 s for the full 60 m T29UNU stack), so a stack is written through the
#: one handle that creates it.
CREATION_OPTIONS: dict[str, Any] = {
    "driver": "GTiff",
    "dtype": "uint16",
    "nodata": 0,
    "tiled": True,
    "blockxsize": TILE,
    "blockysize": TILE,
    "compress": "zstd",
    "zstd_level": 1,
    "predictor": 2,
    "interleave": "band",  # written band by band: pixel interleaving would recompress every tile per band
    "bigtiff": "if_safer",
}


class StackError(ValueError):
    """A scene stack cannot be built or read (names the file and what is wrong)."""


def stack_path(cache_dir: Path, product: str, resolution: int) -> Path:
    """Where the stack of ``product`` (name without ``.SAFE``) at ``resolution`` metres lives."""
    return Path(cache_dir) / f"{product.removesuffix('.SAFE')}_{resolution}m.tif"


def build_stack(safe_dir: Path, resolution: int, cache_dir: Path, *, report: Callable[..., Any] | None = None) -> Path:
    """Stack the spectral bands of the SAFE folder ``safe_dir`` at ``resolution`` metres (once).

    ``report`` is called as ``report(stage="preparing data", done=bands, total=bands, unit="bands", scene=…)``
    (``done`` counts bands' worth of finished strips). Returns the stack's path; a stack already built is
    returned at once.

    Raises:
        StackError: the product lacks metadata or band files, or a band cannot be decoded.
    """
    build = StackBuild(safe_dir, resolution, cache_dir, report=report)
    build.run()
    return build.path


def start_stack(
    safe_dir: Path, resolution: int, cache_dir: Path, *, report: Callable[..., Any] | None = None
) -> Path | StackBuild:
    """The stack's path when it is built already; else a :class:`StackBuild` that a prediction starts and reads
    while it is built (windows flow from its first decoded strip). Checks the product at once, as
    :func:`build_stack`."""
    build = StackBuild(safe_dir, resolution, cache_dir, report=report)
    return build.path if build.path.is_file() else build


class StackBuild:
    """A stack built strip by strip (:data:`STRIP_ROWS` rows of every band at a time), read from memory as it grows.

    Each strip's bands are decoded side by side, one band per thread (:data:`DECODE_THREADS`; OpenJPEG spreads
    a band's tiles over GDAL's own threads too), while the previous strip is written. A prediction reads its
    windows from the decoded strips in memory (:meth:`read`, the signature of a rasterio dataset's ``read``)
    instead of reading back the file just written: the file is for the next run (the warm cache), written through
    the one handle that created it (so at ZSTD level 1, see :data:`CREATION_OPTIONS`) and readable only once
    complete. The build holds at most :data:`MEMORY_STRIPS` strips the reader has not released (:meth:`release`)
    and waits for it before decoding more, so memory does not grow with the scene; :meth:`read` waits for the
    rows it needs.

    The file is ``<stack>.<pid>.part`` until the last strip is written, then renamed into place; a build that
    fails or is cancelled deletes it, so a stack under its own name is always complete (a process that dies
    mid-build leaves only a ``.part`` file, never read as a stack). The flock on ``<stack>.lock`` is held from
    :meth:`start` to the end, so two processes never build one stack.

    Args:
        safe_dir: the SAFE folder. resolution: metres. cache_dir: where stacks live.
        report: progress, as for :func:`build_stack`.

    Raises:
        StackError: (at once) the product lacks metadata or band files, or its bands' offsets differ.
    """

    def __init__(
        self, safe_dir: Path, resolution: int, cache_dir: Path, *, report: Callable[..., Any] | None = None
    ) -> None:
        try:
            product = read_safe(safe_dir)
            bands = product.bands(resolution)
            self.sources = {band: product.band_file(band, resolution) for band in bands}
        except SafeError as exc:
            raise StackError(str(exc)) from None
        self.product = product
        self.resolution = resolution
        self.report = report
        self.path = stack_path(cache_dir, product.name, resolution)
        #: Rows decoded so far (in memory for the reader; on disk once the stack is renamed into place).
        self.rows = 0
        self.height = self.width = 0
        #: The stack being built by this process (its grid, bands and reflectance terms); None until
        #: :meth:`start`, and when the stack was built already (read it from :attr:`path` then).
        self.info: StackInfo | None = None
        self._offset = 0
        self._state = threading.Condition()
        self._error: BaseException | None = None
        self._finished = False
        self._cancel = threading.Event()
        self._lock = ExitStack()
        self._thread: threading.Thread | None = None
        self._dst: rasterio.io.DatasetWriter | None = None
        self._part = self.path
        self._strips: dict[int, np.ndarray] = {}  # top row → bands × rows × width DN, not yet released
        self._released = 0  # rows the reader no longer needs
        self._wanted = 0  # rows the reader waits for
        if self.path.is_file():
            return
        missing = [str(p.relative_to(product.path)) for p in self.sources.values() if not p.is_file()]
        if missing:
            raise StackError(f"{product.name}: band files missing for the {resolution} m stack: {', '.join(missing)}")
        offsets = {product.offset(band) for band in bands}
        if len(offsets) > 1:
            raise StackError(f"{product.name}: bands have different offsets {sorted(offsets)}; one stack needs one")
        self._offset = offsets.pop()

    def __fspath__(self) -> str:
        return str(self.path)

    def run(self) -> None:
        """Build the stack in this thread (nothing when it is built already); no strip is kept in memory."""
        self._released = 2**62  # no reader: nothing to keep
        if self._begin():
            self._build()
        self.finish()

    def start(self) -> None:
        """Take the lock, create the file and set :attr:`info`, then decode and write the strips on a thread of
        their own (kept in memory for :meth:`read`). Once only; nothing to build when the stack exists."""
        if self._thread is None and self._begin():
            self._thread = threading.Thread(target=self._build, name="stack-writer", daemon=True)
            self._thread.start()

    def cancel(self) -> None:
        """Stop after the strip in hand; the ``.part`` file is deleted and the lock released."""
        self._cancel.set()
        with self._state:
            self._state.notify_all()
        if self._thread is not None:
            self._thread.join()

    def finish(self) -> Path:
        """Wait until the stack is complete under its own name (the reader is done: every strip is released);
        raises the build's error if it failed."""
        self.release(2**62)
        with self._state:
            self._state.wait_for(lambda: self._finished or self._error is not None or self._cancel.is_set())
            self._raise_failure()
            if not self._finished:
                raise StackError(f"{self.path.name}: the stack was cancelled")
        return self.path

    def release(self, row: int) -> None:
        """The reader needs no row above ``row`` any more: their strips leave memory (the build may go on)."""
        with self._state:
            self._released = max(self._released, row)
            for top in [t for t, strip in self._strips.items() if t + strip.shape[1] <= self._released]:
                del self._strips[top]
            self._state.notify_all()

    def read(self, indexes: list[int], window: Window, out: np.ndarray | None = None) -> np.ndarray:
        """Bands ``indexes`` (1-based, as in the stack) of ``window`` (within the scene) from the decoded strips,
        as a rasterio dataset's ``read`` gives them from the finished stack (bands × rows × columns, uint16, into
        ``out`` when given); waits until the rows are decoded.

        Raises:
            StackError: the build failed or was cancelled, or the rows were released already.
        """
        top, left = int(window.row_off), int(window.col_off)
        bottom, right = top + int(window.height), left + int(window.width)
        with self._state:
            self._wanted = max(self._wanted, bottom)
            self._state.notify_all()
            done = lambda: self.rows >= bottom or self._error is not None or self._cancel.is_set()  # noqa: E731
            self._state.wait_for(done)
            self._raise_failure()
            if self.rows < bottom:
                raise StackError(f"{self.path.name}: the stack was cancelled before row {bottom}")
            pieces = sorted((t, s) for t, s in self._strips.items() if t < bottom and t + s.shape[1] > top)
        if not pieces or pieces[0][0] > top:
            raise StackError(f"{self.path.name}: rows from {top} were released before they were read")
        bands = [i - 1 for i in indexes]
        if out is None:
            out = np.empty((len(bands), bottom - top, right - left), dtype=np.uint16)
        for strip_top, strip in pieces:
            a, b = max(top, strip_top), min(bottom, strip_top + strip.shape[1])
            out[:, a - top : b - top] = strip[bands, a - strip_top : b - strip_top, left:right]
        return out

    def _raise_failure(self) -> None:
        """Raise the build's error, if it failed (the lock held)."""
        if self._error is not None:
            raise StackError(f"{self.path.name}: the stack could not be built: {self._error}") from self._error

    # -- the builder ----------------------------------------------------------------------------------------

    def _begin(self) -> bool:
        """Take the lock and create the part file; False when the stack is built already (all rows ready)."""
        if not self.path.is_file():
            self._lock.enter_context(file_lock(self.path.with_name(self.path.name + ".lock")))
        if self.path.is_file():  # built before, or by another process while we waited
            self._lock.close()
            with rasterio.open(self.path) as ds, self._state:
                self.height = self.rows = ds.height
                self._finished = True
            return False
        part = self.path.with_name(f"{self.path.name}.{os.getpid()}.part")
        try:
            crs, transform, width, height = _grid(self.sources, self.resolution)
            profile = {**CREATION_OPTIONS, "crs": crs, "transform": transform, "width": width, "height": height}
            tags = {"BOA_ADD_OFFSET": str(self._offset), "QUANTIFICATION_VALUE": f"{self.product.quantification:g}",
                    "PRODUCT": self.product.name, "RESOLUTION": str(self.resolution),
                    "PROCESSING_BASELINE": self.product.baseline}  # fmt: skip
            # Sparse: a tile not written (a build cancelled) stays absent instead of being filled at the close.
            self._dst = rasterio.open(part, "w", **profile, count=len(self.sources), sparse_ok=True)
            for index, band in enumerate(self.sources, 1):
                self._dst.set_band_description(index, band)
            self._dst.update_tags(**tags)
        except BaseException:
            if self._dst is not None:
                self._dst.close()
            part.unlink(missing_ok=True)
            self._lock.close()
            raise
        # What stack_info reads back from the finished file (the part file is not readable while written).
        self.info = StackInfo(
            path=self.path, bands=tuple(self.sources), offset=float(tags["BOA_ADD_OFFSET"]),
            quantification=float(tags["QUANTIFICATION_VALUE"]), crs=crs, transform=transform, width=width,
            height=height, product_level=product_level(tags),
        )  # fmt: skip
        self._part, self.height, self.width = part, height, width
        return True

    def _build(self) -> None:
        part, dst = self._part, self._dst
        assert dst is not None
        try:
            sources = list(self.sources.values())
            for top, strip in _decode_strips(sources, self.width, self.height, self._cancel, self._room):
                with self._state:
                    if top + strip.shape[1] > self._released:
                        self._strips[top] = strip
                    self.rows = top + strip.shape[1]
                    self._state.notify_all()
                _write_strip(dst, strip, top)
                self._progress(top + strip.shape[1])
            if self._cancel.is_set():
                raise StackError("cancelled")
            dst.close()
            with self._state:
                part.replace(self.path)
                self._finished = True
                self._state.notify_all()
            log.info("%s: %d bands stacked at %d m into %s", self.product.name, len(self.sources), self.resolution,
                     self.path)  # fmt: skip
        except BaseException as exc:
            with self._state:
                self._error = exc
                self._strips.clear()  # (strips of a finished build stay until the reader releases them)
                self._state.notify_all()
            if self._thread is None:  # built in the caller's thread: the caller gets the error itself
                raise
        finally:
            if not dst.closed:
                dst.close()
            part.unlink(missing_ok=True)
            self._lock.close()

    def _room(self) -> None:
        """Wait until another strip may be decoded: fewer than :data:`MEMORY_STRIPS` held for the reader, or the
        reader waits for rows not decoded yet (or the build is cancelled)."""
        with self._state:
            self._state.wait_for(
                lambda: len(self._strips) < MEMORY_STRIPS or self._wanted > self.rows or self._cancel.is_set()
            )

    def _progress(self, rows: int) -> None:
        if self.report is not None:
            total = len(self.sources)
            self.report(stage="preparing data", done=total * rows // self.height, total=total, unit="bands",
                        scene=self.product.name)  # fmt: skip


def _grid(sources: dict[str, Path], resolution: int) -> tuple[Any, Any, int, int]:
    """CRS, transform, width and height of the stack (from the first band, scaled to ``resolution``)."""
    with rasterio.open(next(iter(sources.values()))) as src:
        scale = resolution / src.res[0]
        transform = src.transform @ src.transform.scale(scale, scale)
        return src.crs, transform, round(src.width / scale), round(src.height / scale)


def _decode_strips(
    sources: list[Path], width: int, height: int, cancel: threading.Event, room: Callable[[], None]
) -> Iterator[tuple[int, np.ndarray]]:
    """``(top row, bands × rows × width DN)`` of every strip in order, its bands decoded side by side; the next
    strip is decoded while the caller writes one (once ``room`` returns: the reader's memory bound)."""
    with ExitStack() as context:
        bands = [context.enter_context(_BandRows(source, width, height)) for source in sources]
        workers = max(1, min(DECODE_THREADS, len(bands)))
        pool = context.enter_context(ThreadPoolExecutor(workers, thread_name_prefix="band-decoder"))
        strips = [(top, min(top + STRIP_ROWS, height)) for top in range(0, height, STRIP_ROWS)]

        def decode(top: int, bottom: int) -> list[Future[np.ndarray]]:
            room()
            return [pool.submit(_read_rows, band, top, bottom) for band in bands]

        pending = decode(*strips[0])
        for k, (top, _) in enumerate(strips):
            if cancel.is_set():
                return
            data = np.stack([future.result() for future in pending])
            if k + 1 < len(strips):
                pending = decode(*strips[k + 1])
            yield top, data


def _write_strip(dst: rasterio.io.DatasetWriter, data: np.ndarray, top: int) -> None:
    """Rows ``top`` on of every band (bands × rows × width) into the stack being written."""
    _, rows, width = data.shape
    dst.write(data, window=Window(0, top, width, rows))


class _BandRows:
    """Rows of one band file at the stack's size. A band at the stack's resolution is read strip by strip; an
    L1C band at another native resolution is resampled whole once (averaged down, repeated up), so every row
    is what a whole-band read gives."""

    def __init__(self, source: Path, width: int, height: int) -> None:
        self.source, self.width, self.height = source, width, height
        self._whole: np.ndarray | None = None
        try:
            self.dataset = rasterio.open(source)
        except rasterio.RasterioIOError as exc:
            raise StackError(f"{source}: cannot decode ({exc})") from None
        self.native = (self.dataset.width, self.dataset.height) == (width, height)

    def __enter__(self) -> _BandRows:
        return self

    def __exit__(self, *_: object) -> None:
        self.dataset.close()

    def rows(self, top: int, bottom: int) -> np.ndarray:
        if self.native:
            return self.dataset.read(1, window=Window(0, top, self.width, bottom - top))
        if self._whole is None:
            coarser = self.width < self.dataset.width
            self._whole = self.dataset.read(
                1, out_shape=(self.height, self.width),
                resampling=Resampling.average if coarser else Resampling.nearest,
            )  # fmt: skip
        return self._whole[top:bottom]


def _read_rows(band: _BandRows, top: int, bottom: int) -> np.ndarray:
    """Rows ``[top, bottom)`` of one band (run on a decoder thread, one band each)."""
    try:
        return band.rows(top, bottom)
    except rasterio.RasterioIOError as exc:
        raise StackError(f"{band.source}: cannot decode ({exc})") from None


# -- reading stacks ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackInfo(Grid):
    """What a stacked scene holds: its grid (CRS, transform, size), band names in file order and the
    reflectance terms."""

    path: Path
    bands: tuple[str, ...]
    offset: float
    quantification: float
    #: ``L1C`` (top of atmosphere) or ``L2A`` (bottom of atmosphere), from the tags; None when they do not say.
    product_level: str | None = None

    @property
    def grid(self) -> Grid:
        """The stack's grid alone (compares equal to any other grid with the same CRS, transform and size)."""
        return Grid(self.crs, self.transform, self.width, self.height)

    @property
    def reflectance_terms(self) -> tuple[float, float]:
        """``(scale, shift)`` with reflectance = DN × scale + shift, i.e. (DN + offset) / quantification."""
        return 1.0 / self.quantification, self.offset / self.quantification


#: Pixel sizes within this share of the asked resolution count as equal (rounding in a user's GeoTIFF).
RESOLUTION_TOLERANCE = 0.01
_LEVEL = re.compile(r"MSI(L1C|L2A)")


def product_level(tags: dict[str, str]) -> str | None:
    """``L1C`` / ``L2A`` from a stack's ``PROCESSING_LEVEL`` tag or its ``PRODUCT`` name; None if neither says."""
    level = tags.get("PROCESSING_LEVEL", "").upper().replace("LEVEL-", "L")
    if level in ("L1C", "L2A"):
        return level
    match = _LEVEL.search(tags.get("PRODUCT", ""))
    return match.group(1) if match else None


def pixel_size(path: Path, crs: Any, transform: Any) -> float:
    """The pixel size of a stack in metres; refuses a CRS not in metres (degrees give no usable size).

    Training and prediction refuse such a scene alike, with the same message naming its CRS.
    """
    name = crs.to_string() if crs is not None else "none"
    if crs.is_geographic:
        raise StackError(
            f"scene {path} is in {name}, a geographic CRS (pixel size {abs(transform.a):g} degrees): torchbearer "
            "needs a projected CRS in metres, as Sentinel-2 products come (UTM): reproject it, e.g. "
            f"gdalwarp -t_srs EPSG:326<zone> -tr 20 20 {path.name} out.tif"
        )
    units, factor = crs.linear_units_factor
    if abs(factor - 1.0) > 1e-9:
        raise StackError(f"scene {path} is in {name}, whose units are {units}, not metres: reproject it (UTM)")
    if abs(transform.a) != abs(transform.e) or transform.b or transform.d:
        raise StackError(f"scene {path} has non-square or rotated pixels ({transform.a:g} × {transform.e:g})")
    return abs(transform.a)


def stack_info(path: Path, resolution: int | None = None) -> StackInfo:
    """Open a stack (a cache file, or a user's GeoTIFF of uint16 DN) and check it.

    A GeoTIFF without band descriptions is taken to hold the bands of its resolution in stack order; one
    without the offset tag gets offset 0 and quantification 10000. ``resolution`` (metres, what the job says)
    must be the stack's pixel size: a 60 m file read as 20 m would get the 20 m band names.

    Raises:
        StackError: missing or unreadable file, a CRS not in metres, a pixel size other than ``resolution``
            (or than its ``RESOLUTION`` tag), values that are not uint16 DN, or the wrong band count.
    """
    path = Path(path)
    if not path.is_file():
        raise StackError(f"scene {path} not found")
    try:
        with rasterio.open(path) as ds:
            tags, descriptions = ds.tags(), ds.descriptions
            dtype, count, crs, transform = ds.dtypes[0], ds.count, ds.crs, ds.transform
            width, height = ds.width, ds.height
    except rasterio.RasterioIOError as exc:
        raise StackError(f"scene {path} is not a readable GeoTIFF (corrupt or truncated?): {exc}") from None
    if crs is None:
        raise StackError(f"scene {path} has no CRS: it cannot be matched with its masks")
    size = pixel_size(path, crs, transform)
    tagged = tags.get("RESOLUTION")
    if tagged is not None and not _same_size(float(tagged), size):
        raise StackError(f"scene {path} has {size:g} m pixels but its RESOLUTION tag says {tagged} m")
    if resolution is not None and not _same_size(resolution, size):
        raise StackError(
            f"scene {path} has {size:g} m pixels, but the job asks for resolution: {resolution}: set resolution: "
            f"{round(size)} (or leave it out to use the scene's own) — its bands would be named as {resolution} m "
            "bands otherwise"
        )
    if dtype != "uint16":
        raise StackError(
            f"scene {path} holds {dtype} values; scenes must be uint16 DN as Sentinel-2 delivers them "
            "(reflectance scaled again would be double-scaled)"
        )
    resolution = resolution or round(size)
    bands = tuple(descriptions) if all(descriptions) else BANDS_BY_RESOLUTION.get(resolution, ())
    if len(bands) != count or not bands:
        expected = BANDS_BY_RESOLUTION.get(resolution, ())
        raise StackError(
            f"scene {path} has {count} bands; a {resolution} m stack has {len(expected)} "
            f"({' '.join(expected)}) or names its bands in the band descriptions"
        )
    return StackInfo(
        path=path,
        bands=bands,
        offset=float(tags.get("BOA_ADD_OFFSET", 0)),
        quantification=float(tags.get("QUANTIFICATION_VALUE", 10000)),
        crs=crs,
        transform=transform,
        width=width,
        height=height,
        product_level=product_level(tags),
    )


def _same_size(resolution: float, size: float) -> bool:
    return abs(size - resolution) <= RESOLUTION_TOLERANCE * resolution


def band_indexes(info: StackInfo, bands: list[str] | tuple[str, ...]) -> list[int]:
    """1-based indexes of ``bands`` in the stack (for ``rasterio`` reads), in the order asked."""
    missing = [b for b in bands if b not in info.bands]
    if missing:
        raise StackError(f"scene {info.path} lacks bands {', '.join(missing)} (it has {' '.join(info.bands)})")
    return [info.bands.index(b) + 1 for b in bands]


def valid_pixels(dn: np.ndarray) -> np.ndarray:
    """Pixels with data in every band (rows × columns, bool): DN 0 in any band is no data."""
    return (dn != 0).all(axis=-3)
