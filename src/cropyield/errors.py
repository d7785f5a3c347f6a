"""Exceptions, warnings and flag codes shared by every stage.

Every error derives from :class:`CropYieldError`; messages say what to do next.
Data problems that must reach users even from dask workers are also written into
outputs as flag codes (see :data:`FLAGS`), because warnings do not travel.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CropYieldError",
    "MissingCRSError",
    "InvalidFieldsError",
    "CatalogError",
    "NoScenesError",
    "UnknownCollectionError",
    "AssetReadError",
    "CorruptAssetError",
    "AuthExpiredError",
    "ConfigError",
    "ModelError",
    "CreditInputError",
    "CreditSchemaError",
    "IndexFormulaError",
    "UnknownIndexError",
    "MissingBandError",
    "CropYieldWarning",
    "OffsetInconsistentWarning",
    "DataQualityWarning",
    "FLAGS",
    "join_flags",
    "split_flags",
]


class CropYieldError(Exception):
    """Base class of every error raised by cropyield."""


class MissingCRSError(CropYieldError, ValueError):
    """Geometries were given without a coordinate reference system."""


class InvalidFieldsError(CropYieldError, ValueError):
    """The fields table is malformed (duplicate ids, empty or invalid geometries...)."""


class CatalogError(CropYieldError):
    """A STAC catalog could not be searched (after retries) or answered nonsense."""


class NoScenesError(CatalogError):
    """A search matched no scene; the message lists the query."""


class UnknownCollectionError(CatalogError, ValueError):
    """An item belongs to a collection whose band layout cropyield does not know."""


class AssetReadError(CropYieldError, OSError):
    """A raster asset could not be read (after retries). The href is redacted."""

    #: the read-failure record (href, error, reason, attempts) once the reader has logged it
    record: dict[str, Any]

    def __init__(self, message: str, *, href: str | None = None, reason: str = "read_failed",
                 attempts: int = 1):
        super().__init__(message)
        self.href = href
        self.reason = reason
        self.attempts = attempts


class CorruptAssetError(AssetReadError):
    """A raster asset was fetched but could not be decoded (bad header or tile)."""


class AuthExpiredError(AssetReadError):
    """A signed URL was refused (HTTP 403) even after re-signing."""


class ConfigError(CropYieldError, ValueError):
    """A parameter file or override is invalid."""


class ModelError(CropYieldError):
    """A model could not be fitted or loaded."""


class CreditInputError(CropYieldError, ValueError):
    """The estimates or farmers table cannot be turned into credit profiles (missing columns...)."""


class CreditSchemaError(CropYieldError, ValueError):
    """A credit record (profile, field evidence, policy) is malformed or of an unsupported
    schema version; the message names the offending key and the supported versions."""


class IndexFormulaError(CropYieldError, ValueError):
    """A custom index formula uses something outside the allowed expression language."""


class UnknownIndexError(CropYieldError, ValueError):
    """An index name is neither registered nor a valid formula."""


class MissingBandError(CropYieldError, ValueError):
    """A band needed by an index (or a mask) was not given."""


class CropYieldWarning(UserWarning):
    """Base class of every warning emitted by cropyield."""


class OffsetInconsistentWarning(CropYieldWarning):
    """Radiometric offset metadata disagrees with the processing-baseline rule."""


class DataQualityWarning(CropYieldWarning):
    """Input data are usable but of reduced quality (also recorded as flags)."""


#: Machine-readable flag codes that travel with numbers in every output table.
#: Keys are the codes, values a one-line human explanation.
FLAGS: dict[str, str] = {
    # observations
    "NO_OVERLAP": "the field does not overlap the scene's valid footprint",
    "ALL_MASKED": "every pixel of the field is masked (cloud, shadow, nodata...)",
    "LOW_VALID_FRACTION": "valid fraction below the requested minimum",
    "READ_FAILED": "a raster read failed; the row carries no numbers",
    "AUTH_EXPIRED": "a signed URL was refused after re-signing",
    "OFFSET_INCONSISTENT": "radiometric offset metadata disagree with the baseline rule",
    "FIELD_TOO_SMALL": "the field covers too few pure pixels for a reliable estimate",
    "SUBPIXEL_FIELD": "the field is smaller than one pixel",
    "INVALID_GEOMETRY": "the field geometry is empty, not a polygon, self-intersecting or has "
                        "non-finite vertices; the row carries no numbers",
    "GEOMETRY_REPAIRED": "the field geometry was invalid and repaired with make_valid "
                         "(repair_geometry=True); check the outline",
    "PARTIAL_COVERAGE": "only part of the field lies in the scene's grid (see "
                        "covered_fraction); the numbers describe that part",
    "SATURATED": "some pixels of the field were saturated (DN 65535); they are masked like "
                 "no-data and lower valid_fraction",
    "REFLECTANCE_OUT_OF_RANGE": "some pixels had a reflectance outside the physical range "
                                "(corrupt data?); they are masked like no-data",
    "INVALID_INDEX": "the index is undefined (zero denominator or out of its valid range) "
                     "on every valid pixel of the field",
    # series / phenology / crops
    "NO_DATA": "no valid observation at all",
    "LOW_OBS": "too few clear observations in the season",
    "CLOUDY_SEASON": "most of the season is cloud-covered",
    "NO_SEASON": "no growing season found",
    "EXTRAPOLATED": "values outside the observed period are extrapolated",
    "CROP_MISMATCH": "the declared crop disagrees with the imagery",
    "CROP_UNCERTAIN": "crop identification is not confident",
    "PARTIAL_SEASON": "the season is cut by the start or end of the series (e.g. in-season)",
    "FIT_FAILED": "a curve fit (e.g. double logistic) did not converge",
    # yield / value
    "OUT_OF_RANGE": "estimate outside the crop's sanity range",
    "LEVEL_UNCALIBRATED": "crop-model-trained yield whose level no statistic or cut has set",
    "NO_PRICE": "no price record for this crop and region",
    "NO_MODEL": "no yield model for this crop",
    "NO_WEATHER": "the yield model uses weather covariates and this season's weather is "
                  "missing (no daily weather for the field, or under 80 % of a window's "
                  "days); no yield given",
    "FEW_POOLED": "the yield model uses pooled group features (pool_by=) and fewer than 5 "
                  "seasons of the crop share this field's group; no yield given",
    "AREA_MISMATCH": "declared area differs from the measured area",
    "BENCHMARK_YIELD": "yield is a regional benchmark (x vigour), not modelled from light use",
    "CROP_DECLARED": "crop taken from the farmer's declaration, not identified from imagery",
    "SEASON_INCOMPLETE": "the season had not ended at as_of; no yield before harvest",
}


def join_flags(*groups) -> str:
    """Canonical flags cell: unique codes, sorted, comma-separated ('' when none).

    Each argument may be a code, an iterable of codes, an existing flags string or None.
    """
    codes: set[str] = set()
    for g in groups:
        if g is None:
            continue
        if isinstance(g, str):
            codes.update(c.strip() for c in g.split(",") if c.strip())
        else:
            for c in g:
                codes.update(split_flags(c) if isinstance(c, str) else ())
    return ",".join(sorted(codes))


def split_flags(cell) -> list[str]:
    """Inverse of :func:`join_flags`; NaN/None give []."""
    if cell is None or (isinstance(cell, float) and cell != cell):
        return []
    return [c for c in str(cell).split(",") if c]
