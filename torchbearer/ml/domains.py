"""Value domains: what the numbers of an input raster mean, so a model is never fed input scaled another way.

``dn``: Sentinel-2 digital numbers (uint16; reflectance = (DN + ``BOA_ADD_OFFSET``) / ``QUANTIFICATION_VALUE``,
DN 0 no data): every stacked scene. ``reflectance``: reflectance 0–1 (float). ``uint8``: 8-bit display values
(taken as value / 255). ``prepare`` tags what it writes with ``VALUE_DOMAIN``; a model card records the domain
its model was trained on (``extra.value_domain``), and a prediction refuses a scene of another domain: the
seed project's blank masks came from imagery rescaled twice without anything noticing.
"""

from __future__ import annotations

from pathlib import Path

#: The value domains, and the tag that names one on a GeoTIFF.
VALUE_DOMAINS = ("dn", "reflectance", "uint8")
DOMAIN_TAG = "VALUE_DOMAIN"


class DomainError(ValueError):
    """Input of one value domain given to a model trained on another (the message names both)."""


def domain_terms(domain: str, tags: dict[str, str]) -> tuple[float, float]:
    """``(scale, shift)`` with reflectance-like value = raw × scale + shift, for a raster of ``domain``."""
    if domain == "dn":
        quantification = float(tags.get("QUANTIFICATION_VALUE", 10000))
        return 1.0 / quantification, float(tags.get("BOA_ADD_OFFSET", 0)) / quantification
    if domain == "uint8":
        return 1.0 / 255.0, 0.0
    return 1.0, 0.0


def guess_domain(dtype: str) -> str:
    """The domain of an untagged raster from its data type: uint16 DN, uint8 display values, float reflectance."""
    return {"uint16": "dn", "uint8": "uint8"}.get(dtype, "reflectance")


def raster_domain(path: Path) -> str:
    """The value domain of a raster: its ``VALUE_DOMAIN`` tag, else guessed from its data type."""
    import rasterio

    with rasterio.open(path) as ds:
        return (ds.tags().get(DOMAIN_TAG) or guess_domain(ds.dtypes[0])).strip().lower()


def card_domain(extra: dict) -> str:
    """The domain a model card's model expects (cards written before domains were recorded: ``dn``)."""
    return str(extra.get("value_domain", "dn"))


def check_domain(expected: str, path: Path, model: str, found: str | None = None) -> None:
    """Refuse ``path`` unless it holds ``expected`` values (``model`` names the model in the message; ``found``:
    the domain when known without opening the file, e.g. a stack still being built)."""
    found = found or raster_domain(path)
    if found != expected:
        raise DomainError(
            f"model {model} was trained on {expected} input, but {path} holds {found} values "
            f"(tag {DOMAIN_TAG}): predicting on input scaled another way gives garbage; give it {expected} input"
        )
