"""The steps of a ``prepare`` job (and of ``torchbearer prepare <step>``) as pydantic models: no heavy imports.

A job's ``steps:`` is a list of one-key mappings, run in order; what one step writes feeds the next unless a
step names its own input: the scene (the job's ``scene``, stacked from a SAFE folder if need be, or the last
``mosaic``), the mask (the last ``rasterize``), the chip folder (the last ``chip``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from torchbearer.spec import StrictModel

STEP_NAMES = ("rasterize", "chip", "split", "mosaic", "flatten", "summarize", "patches")


class RasterizeStep(StrictModel):
    """Vector labels → a uint8 mask on the scene's grid (or on ``extent`` + ``resolution`` + ``crs``)."""

    labels: str = Field(description="GeoJSON, GeoPackage or Shapefile, any CRS")
    output: str = Field(description="the mask (.tif)")
    scene: str | None = Field(None, description="grid to burn onto (default: the job's scene)")
    extent: list[float] | None = Field(None, description="[left, bottom, right, top] in crs, instead of a scene")
    resolution: float | None = Field(None, gt=0, description="pixel size with extent, CRS units")
    crs: str | None = Field(None, description="CRS of extent, e.g. EPSG:32629")
    attribute: str | None = Field(None, description="class attribute; without it every feature burns 1")
    values: dict[str, int] | None = Field(None, description="attribute value → burnt value 1–254")
    order: Literal["file", "attribute", "area"] = Field("file", description="burn order: area puts small on top")
    all_touched: bool = Field(False, description="burn every pixel a polygon touches")
    ignore_edge: int = Field(0, ge=0, le=100, description="pixels of 255 (ignored) along polygon edges")

    @field_validator("values")
    @classmethod
    def _values(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for key, burnt in (value or {}).items():
            if not 0 <= burnt <= 254:
                raise ValueError(f"value of {key!r} is {burnt}: burnt values are 0–254 (255 means no label)")
        return value

    @model_validator(mode="after")
    def _grid(self) -> RasterizeStep:
        given = [self.extent is not None, self.resolution is not None, self.crs is not None]
        if any(given) and not all(given):
            raise ValueError("a grid from an extent needs extent, resolution and crs together")
        if self.extent is not None and len(self.extent) != 4:
            raise ValueError("extent is [left, bottom, right, top]")
        if self.values is not None and self.attribute is None:
            raise ValueError("values maps the values of an attribute: give attribute too")
        return self


class ChipStep(StrictModel):
    """Scene (+ mask) → chips in the roof-classify layout with a GeoPackage index."""

    output: str = Field(description="the chip folder")
    size: int = Field(ge=8, le=8192, description="chip edge, pixels")
    overlap: int = Field(0, ge=0, description="pixels shared by neighbouring chips")
    scene: str | None = Field(None, description="default: the job's scene (or the last mosaic)")
    mask: str | None = Field(None, description="default: the last rasterize output, if any")
    positive_only: bool = Field(False, description="skip chips whose mask has no pixel above 0")
    nodata: float | None = Field(None, description="padding / no-data value (default: the scene's, else 0)")

    @model_validator(mode="after")
    def _overlap(self) -> ChipStep:
        if self.overlap >= self.size:
            raise ValueError(f"overlap {self.overlap} must be below the chip size {self.size}")
        return self


class SplitStep(StrictModel):
    """A chip folder's chips → train / val (/ test) by spatial blocks."""

    chips: str | None = Field(None, description="default: the last chip folder")
    val: float = Field(0.2, ge=0, lt=1, description="share of blocks for validation")
    test: float = Field(0.0, ge=0, lt=1, description="share of blocks for test")
    block: int | None = Field(None, ge=1, description="block edge, pixels (default: 4 chips)")
    seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> SplitStep:
        if self.val + self.test >= 1:
            raise ValueError("val + test must leave a share for train")
        return self


class MosaicStep(StrictModel):
    """Rasters of one CRS and band set → one COG (or VRT)."""

    inputs: list[str] = Field(min_length=1, description="rasters (or SAFE folders) to mosaic")
    output: str = Field(description=".tif (COG) or .vrt")
    reproject: bool = Field(False, description="warp rasters in another CRS to the first's")

    @property
    def format(self) -> Literal["cog", "vrt"]:
        return "vrt" if self.output.lower().endswith(".vrt") else "cog"


class FlattenStep(StrictModel):
    """Valid pixels → a table: x, y, lon, lat, row, col, bands, label."""

    output: str = Field(description=".parquet, or .csv for CSV")
    scene: str | None = Field(None, description="default: the job's scene (or the last mosaic)")
    mask: str | None = Field(None, description="default: the last rasterize output, if any")

    @property
    def format(self) -> Literal["parquet", "csv"]:
        return "csv" if self.output.lower().endswith(".csv") else "parquet"


class SummarizeStep(StrictModel):
    """Band statistics, histograms and class balance of a raster or a chip folder."""

    output: str = Field(description="folder for band_stats.csv, class_balance.csv, hist_*.png, summary.md")
    source: str | None = Field(
        None, description="a raster or chip folder (default: the last chip folder, else the scene)"
    )
    mask: str | None = Field(None, description="with a raster source: default the last rasterize output")


class PatchesStep(StrictModel):
    """Scene + a class raster on its grid → a EuroSAT-style patch set (a folder of GeoTIFFs per class), the
    ``classify`` kind's input. A patch's class is the majority of the class raster's values that each class
    gathers (e.g. an SCL band: ``cloud: [8, 9, 10]``)."""

    labels: str = Field(description="class raster on the scene's grid (an SCL band, a rasterized mask)")
    classes: dict[str, list[int]] = Field(min_length=2, description="class name → the raster values it gathers")
    output: str = Field(description="the patch set's folder (a folder per class is made in it)")
    size: int = Field(16, ge=2, le=4096, description="patch edge, pixels")
    purity: float = Field(0.6, gt=0, le=1, description="least share of the majority class in a patch")
    per_class: int | None = Field(100, ge=1, description="most patches per class (a seeded draw); null: all")
    seed: int = Field(0, ge=0)
    label_nodata: int | None = Field(None, description="no-data value of labels (default: the raster's own)")
    scene: str | None = Field(None, description="default: the job's scene (or the last mosaic)")


class Step(StrictModel):
    """One step: a mapping with exactly one of the step names as its key."""

    rasterize: RasterizeStep | None = None
    chip: ChipStep | None = None
    split: SplitStep | None = None
    mosaic: MosaicStep | None = None
    flatten: FlattenStep | None = None
    summarize: SummarizeStep | None = None
    patches: PatchesStep | None = None

    @model_validator(mode="after")
    def _one(self) -> Step:
        given = [name for name in STEP_NAMES if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a step is one of {', '.join(STEP_NAMES)}; got {', '.join(given) or 'none'}")
        return self

    @property
    def name(self) -> str:
        return next(name for name in STEP_NAMES if getattr(self, name) is not None)

    @property
    def options(self) -> StrictModel:
        return getattr(self, self.name)


def check_chain(steps: list[Step], has_scene: bool) -> None:
    """Refuse a chain whose step lacks an input no earlier step (nor the job) provides."""
    scene, chips = has_scene, False
    for i, step in enumerate(steps):
        o = step.options
        where = f"steps[{i}].{step.name}"
        if step.name == "mosaic":
            scene = True
        elif step.name == "rasterize" and not (scene or o.scene or o.extent):  # type: ignore[attr-defined]
            raise ValueError(f"{where}: no grid: give the job a scene, or the step a scene or extent")
        elif step.name in ("chip", "flatten", "patches") and not (scene or o.scene):  # type: ignore[attr-defined]
            raise ValueError(f"{where}: no scene: give the job a scene, the step a scene, or mosaic first")
        elif step.name == "split" and not (chips or o.chips):  # type: ignore[attr-defined]
            raise ValueError(f"{where}: no chip folder: chip first or give chips")
        elif step.name == "summarize" and not (scene or chips or o.source):  # type: ignore[attr-defined]
            raise ValueError(f"{where}: nothing to summarize: give source, a scene, or chip first")
        chips = chips or step.name == "chip"
