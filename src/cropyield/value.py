"""Output value per field and season: area, yield interval, production and value in CNY.

:func:`estimate_yield` is the "estimates" stage of docs/contracts.md. It measures field areas
in an equal-area/UTM projection, takes seasons from :func:`cropyield.seasons.phenology` (or
a given table), crops from :func:`cropyield.identify.identify_crops` output (or the fields'
declared ``crop``), predicts yield P10/P50/P90 with a :class:`~cropyield.yieldmodel.YieldModel`
and values it with a :class:`PriceTable`. Units: yield t/ha, area ha (and mu, 15 mu = 1 ha),
production t, price CNY/t (records are stored in CNY/kg), value CNY.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ._geo import MU_PER_HA, field_shapes, validate_fields
from ._log import logger
from .crops import CropRegistry, load_registry
from .errors import ConfigError, join_flags, split_flags
from .yieldmodel import LUEModel, YieldModel

__all__ = ["PriceRecord", "PriceTable", "estimate_yield", "ESTIMATE_COLUMNS"]

PRICE_TYPES = ("minimum_purchase", "market", "contract")

#: Output columns of :func:`estimate_yield`, in order (docs/contracts.md "estimates").
ESTIMATE_COLUMNS = [
    "field_id", "farmer_id", "season", "crop", "crop_prob", "area_ha", "area_mu",
    "declared_area_mu", "yield_basis", "yield_t_ha_p10", "yield_t_ha_p50", "yield_t_ha_p90",
    "production_t_p10", "production_t_p50", "production_t_p90", "price_cny_per_t",
    "price_record", "value_cny_p10", "value_cny_p50", "value_cny_p90", "sos", "pos", "eos",
    "harvest_date", "n_obs", "quality", "model_version", "calibration", "flags", "scene_ids",
]


@dataclass(frozen=True)
class PriceRecord:
    """One price: ``price`` in ``unit`` (CNY/kg) for ``crop`` in ``region`` from ``valid_from``."""

    crop: str
    region: str
    price: float
    unit: str
    type: str
    valid_from: _dt.date
    source: str
    moisture_basis: float | None = None

    def __post_init__(self) -> None:
        if self.unit != "CNY/kg":
            raise ConfigError(f"price unit must be 'CNY/kg', got {self.unit!r} for {self.crop}; "
                              "convert (e.g. CNY/50 kg ÷ 50, CNY/t ÷ 1000)")
        if self.type not in PRICE_TYPES:
            raise ConfigError(f"price type must be one of {PRICE_TYPES}, got {self.type!r}")
        try:
            p = float(self.price) if not isinstance(self.price, bool) else math.nan
        except (TypeError, ValueError, OverflowError):
            p = math.nan
        if not (math.isfinite(p) and p > 0):
            raise ConfigError(f"price must be a positive number, got {self.price!r} for "
                              f"{self.crop}/{self.region}")
        object.__setattr__(self, "price", p)
        vf = self.valid_from
        try:
            if isinstance(vf, str):
                vf = _dt.date.fromisoformat(vf.strip())
            elif isinstance(vf, (_dt.datetime, pd.Timestamp)):
                if pd.isna(vf):
                    raise ValueError("NaT")
                vf = vf.date()
            elif not isinstance(vf, _dt.date):
                raise TypeError(type(vf).__name__)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"price record {self.crop}/{self.region} ({self.source!r}): valid_from "
                f"{str(self.valid_from)[:40]!r} is not a date ({type(exc).__name__}); write it "
                "as YYYY-MM-DD, e.g. valid_from = 2025-01-01"
            ) from None
        object.__setattr__(self, "valid_from", vf)

    @property
    def cny_per_t(self) -> float:
        return self.price * 1000.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["valid_from"] = self.valid_from.isoformat()
        return d


class PriceTable:
    """Price records with date- and region-aware lookup.

    Parameters
    ----------
    records : iterable of PriceRecord or dicts, optional
        Default: the packaged ``data/prices.toml`` (sources: docs/references.md).
    conservative : bool
        If True, :meth:`lookup` applies the conservative rule (for wheat and rice in MSP provinces):
        ``max(MSP, market_haircut × market)``; a missing MSP counts as 0 (market-only crops
        get ``market_haircut × market``), an MSP alone is used as is, and contract prices
        (when there is neither MSP nor market) are used as is.
    market_haircut : float
        Factor on the market price in the conservative rule (default 0.9).

    Examples
    --------
    >>> import cropyield as cy
    >>> prices = cy.PriceTable(conservative=True)   # the packaged data/prices.toml
    >>> p = prices.lookup("winter_wheat", "henan", "2025-06-15")
    >>> p["price_cny_per_t"], p["rule"]
    (2380.0, 'conservative: minimum_purchase only')
    """

    def __init__(self, records: Iterable[PriceRecord | Mapping[str, Any]] | None = None, *,
                 conservative: bool = False, market_haircut: float = 0.9):
        if records is None:
            records = _packaged_prices()
        recs = []
        for r in records:
            if isinstance(r, PriceRecord):
                recs.append(r)
                continue
            try:
                recs.append(PriceRecord(**dict(r)))
            except TypeError as exc:
                raise ConfigError(f"bad price record {dict(r)}: {exc}; fields: crop, region, "
                                  "price, unit, type, valid_from, source, moisture_basis") from exc
        self.records: list[PriceRecord] = recs
        self.conservative = bool(conservative)
        self.market_haircut = float(market_haircut)

    @classmethod
    def from_toml(cls, path: str | Path, *, replace: bool = False, **kw) -> "PriceTable":
        """Read ``[[price]]`` records from a TOML file (tomllib; safe) and add them to (or with
        ``replace=True`` replace) the packaged defaults."""
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read prices from {path}: {exc}") from exc
        recs = data.get("price", [])
        base = [] if replace else _packaged_prices()
        return cls(base + list(recs), **kw)

    def with_records(self, records: Iterable[PriceRecord | Mapping[str, Any]]) -> "PriceTable":
        """A new table with ``records`` added (user overrides win on ties of valid_from)."""
        return PriceTable(list(self.records) + list(records), conservative=self.conservative,
                          market_haircut=self.market_haircut)

    def _candidates(self, crop: str, region: str, date: _dt.date, type_: str | None):
        for rg in (region, "china"):
            c = [r for r in self.records if r.crop == crop and r.region == rg
                 and r.valid_from <= date and (type_ is None or r.type == type_)]
            if c:
                # latest valid_from; later records in the list win ties (user overrides)
                best = max(range(len(c)), key=lambda i: (c[i].valid_from, i))
                return c[best]
        return None

    def lookup(self, crop: str, region: str = "china", date=None, *,
               type: str | None = None, conservative: bool | None = None
               ) -> dict[str, Any] | None:
        """Price in force for ``crop`` in ``region`` on ``date``.

        The record with the latest ``valid_from <= date`` for the region wins, else the same
        for region ``"china"``. With the conservative rule the price is ``max(MSP, haircut ×
        market)`` when both exist (``min_purchase`` alone: MSP; market alone: market).

        Returns
        -------
        dict or None
            ``{"price_cny_per_kg", "price_cny_per_t", "rule", "records": [record dicts]}``,
            or None when no record applies (the caller flags ``NO_PRICE``).
        """
        d = _to_date(date) if date is not None else _dt.date.today()
        cons = self.conservative if conservative is None else conservative
        if type is not None or not cons:
            r = self._candidates(crop, region, d, type)
            if r is None:
                return None
            return {"price_cny_per_kg": r.price, "price_cny_per_t": r.cny_per_t,
                    "rule": "latest record", "records": [r.to_dict()]}
        msp = self._candidates(crop, region, d, "minimum_purchase")
        mkt = self._candidates(crop, region, d, "market")
        con = self._candidates(crop, region, d, "contract")
        if msp is not None and mkt is not None:
            p = max(msp.price, self.market_haircut * mkt.price)
            return {"price_cny_per_kg": p, "price_cny_per_t": p * 1000.0,
                    "rule": f"conservative: max(MSP, {self.market_haircut:g} x market)",
                    "records": [msp.to_dict(), mkt.to_dict()]}
        if mkt is not None:
            p = self.market_haircut * mkt.price
            return {"price_cny_per_kg": p, "price_cny_per_t": p * 1000.0,
                    "rule": f"conservative: {self.market_haircut:g} x market (no MSP)",
                    "records": [mkt.to_dict()]}
        r = msp or con
        if r is None:
            return None
        return {"price_cny_per_kg": r.price, "price_cny_per_t": r.cny_per_t,
                "rule": f"conservative: {r.type} only", "records": [r.to_dict()]}


def _to_date(x) -> _dt.date:
    if isinstance(x, _dt.datetime):
        return x.date()
    if isinstance(x, _dt.date):
        return x
    t = pd.Timestamp(x)
    if pd.isna(t):
        raise ValueError("date is NaT")
    return t.date()


def _packaged_prices() -> list[dict[str, Any]]:
    path = resources.files("cropyield") / "data" / "prices.toml"
    if not path.is_file():
        return []
    return copy.deepcopy(tomllib.loads(path.read_text(encoding="utf-8")).get("price", []))


def _resolve_prices(prices) -> PriceTable:
    if prices is None:
        return PriceTable()
    if isinstance(prices, PriceTable):
        return prices
    if isinstance(prices, (str, Path)):
        return PriceTable.from_toml(prices)
    if isinstance(prices, Mapping):  # {crop: CNY/kg} simple override
        recs = [{"crop": c, "region": "china", "price": float(v), "unit": "CNY/kg",
                 "type": "market", "valid_from": "1900-01-01", "source": "user override"}
                for c, v in prices.items()]
        return PriceTable(recs)
    if isinstance(prices, Sequence):
        return PriceTable(prices)
    raise ConfigError("prices must be a PriceTable, a TOML path, {crop: CNY/kg} or a list of "
                      "records")


def _split_declared(value) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [v.strip() for v in str(value).replace("+", ",").split(",") if v.strip()]


def _in_window(doy: int, win) -> bool:
    a, b = int(win[0]), int(win[1])
    return a <= doy <= b if a <= b else (doy >= a or doy <= b)


def _declared_crop_for(decl: list[str], season_rank: int, n_seasons: int, pos, region: str,
                       registry: CropRegistry) -> str | None:
    """Pick which declared crop a detected season is: by peak window of the crop calendar,
    else by order when the count matches."""
    if not decl:
        return None
    if len(decl) == 1:
        return decl[0]
    if pos is not None and not pd.isna(pos):
        doy = pd.Timestamp(pos).day_of_year
        hits = []
        for c in decl:
            if c in registry:
                cal = registry[c].calendar(region)
                if cal is not None and _in_window(doy, cal.peak_doy):
                    hits.append(c)
        if len(hits) == 1:
            return hits[0]
    if n_seasons == len(decl):
        return decl[season_rank]
    return None


def _count(*values: Any) -> Any:
    """The first of ``values`` that is a known count, as an int; ``pd.NA`` when none is.

    The yield model's count (``n_obs_pred``) equals phenology's ``n_obs`` where both exist;
    phenology's fills in for seasons no model saw.
    """
    for v in values:
        if v is not None and not isinstance(v, str) and pd.notna(v):
            return int(v)
    return pd.NA


def _wx_kw(model, weather, pool_by=None, covariates=None) -> dict:
    """``weather=`` for models that take it (empirical / simulation), nothing for others;
    ``pool_by=`` for models with pooled group features, ``covariates=`` for models with
    season covariates."""
    from .yieldmodel import EmpiricalModel

    if not isinstance(model, EmpiricalModel):
        return {}
    kw = {"weather": weather}
    if getattr(model, "pooled_features", None):
        kw["pool_by"] = pool_by
    if getattr(model, "covariate_features", None):
        kw["covariates"] = covariates
    return kw


def estimate_yield(series: pd.DataFrame, fields, *, model: YieldModel | Mapping[str, YieldModel]
                   | None = None, prices=None, season=None, phenology: pd.DataFrame | None = None,
                   crops: pd.DataFrame | None = None, region: str = "north_china_plain",
                   as_of=None, index: str = "ndvi", radiation=None, registry=None,
                   min_area_ha: float = 0.1, min_pixels: float = 10.0,
                   area_tolerance: float = 0.15, min_crop_prob: float = 0.6,
                   id_col: str = "field_id", weather: pd.DataFrame | None = None,
                   pool_by=None, covariates: pd.DataFrame | None = None) -> pd.DataFrame:
    """Yield, production and output value per (field, season).

    Parameters
    ----------
    series : DataFrame
        Daily series from :func:`cropyield.series.smooth_series` (``field_id, time, <index>,
        support, gap_days, flags``). ``series.attrs["scene_ids"]`` (list, or mapping
        field_id -> list) is reported in ``scene_ids``.
    fields : GeoDataFrame
        Fields with a CRS and unique ``field_id``; optional ``crop`` (declared; several crops
        of a double-cropping system as ``"winter_wheat+summer_maize"``), ``farmer_id``,
        ``declared_area_mu``, ``region``.
    model : YieldModel or {crop: YieldModel}, optional
        Default: :class:`~cropyield.yieldmodel.LUEModel` with the registry's default
        (uncalibrated, NBS-anchored) factors. Seasons whose crop has no model get ``NO_MODEL``.
    prices : PriceTable, path, {crop: CNY/kg} or list of records, optional
        Default: packaged table (sources: docs/references.md).
    season : int, (start, end) or None
        Keep only season number ``season``, or seasons whose peak (``pos``) falls within
        ``[start, end]`` (dates); default all.
    phenology : DataFrame, optional
        :func:`cropyield.seasons.phenology` output; computed from ``series`` when None.
    crops : DataFrame, optional
        :func:`cropyield.identify.identify_crops` output (``field_id, season, crop,
        crop_prob, flags``). Without it the declared ``crop`` of ``fields`` is used
        (``CROP_DECLARED``).
    region : str
        Region (calibration, climatology, prices) for fields without a ``region`` column.
    as_of : date-like, optional
        Valuation date: seasons ending after it get NaN and ``SEASON_INCOMPLETE``; prices in
        force on this date are used. Default: prices on each season's harvest date.
    index : str
        Index column for the yield model and phenology.
    radiation : DataFrame, optional
        Daily measured radiation (see :meth:`LUEModel.predict`).
    min_area_ha, min_pixels : float
        ``FIELD_TOO_SMALL`` below either (10 m pixels: ``area / 100 m²``); fields below one
        pixel get ``SUBPIXEL_FIELD`` and NaN.
    area_tolerance : float
        Relative difference beyond which a declared area gets ``AREA_MISMATCH``.
    min_crop_prob : float
        ``CROP_UNCERTAIN`` below this crop probability.
    id_col : str
        Name of the field id column of ``fields``.
    weather : DataFrame, optional
        Daily weather per field (``field_id, time, tmin_c, tmax_c`` degC,
        ``radiation_mj_m2`` MJ m-2 d-1, ``rain_mm`` mm/d) for yield models fitted with
        weather covariates (``fit_yield_model(..., weather=)``); such a model without it
        raises :class:`~cropyield.errors.ModelError` saying so, and seasons whose weather
        is missing get NaN and ``NO_WEATHER``. Ignored by models without weather.
    pool_by : mapping, Series or str, optional
        For yield models fitted with ``pool_by=`` (pooled group features,
        :mod:`cropyield.yieldmodel.pooled`): a group label (county and season) per field id,
        or the name of a ``fields`` column. Each field's estimate then depends on the imagery
        of the other fields of its group. Ignored by models without pooled features.
    covariates : DataFrame, optional
        For yield models fitted with ``covariates=`` (season-level weather covariates such
        as the crop-model index of :func:`cropyield.cropmodel.reference_yield`):
        ``field_id, season`` and the model's ``wx_*`` covariate columns. Ignored by models
        without them.

    Returns
    -------
    DataFrame
        Columns :data:`ESTIMATE_COLUMNS` (docs/contracts.md "estimates"), one row per
        (field_id, season); value columns in CNY, ``price_cny_per_t`` in CNY/t. NaN numbers
        always come with flags saying why.

    Raises
    ------
    MissingCRSError, InvalidFieldsError
        Fields without CRS, duplicated ids or missing geometries.

    Examples
    --------
    Offline, on the synthetic world (a few seconds):

    >>> import cropyield as cy
    >>> from cropyield import synthetic as syn
    >>> cfg = syn.WorldConfig(n_fields=20, seed=1)
    >>> fields = syn.make_fields(cfg)
    >>> series = cy.smooth_series(syn.simulate_observations(fields, cfg), index="ndvi")
    >>> est = cy.estimate_yield(series, fields, model=cy.LUEModel())
    >>> est[["field_id", "season", "crop", "yield_t_ha_p50", "value_cny_p50",
    ...      "flags"]].head()  # doctest: +SKIP
    >>> est["season"].dtype, est["n_obs"].dtype
    (dtype('int64'), Int64Dtype())
    """
    if id_col != "field_id":
        fields = fields.rename(columns={id_col: "field_id"})
    fields = validate_fields(fields, id_col="field_id")
    reg = registry if isinstance(registry, CropRegistry) else load_registry(registry)
    table = _resolve_prices(prices)
    if model is None:
        model = LUEModel(region=region, index=index)
    # area (ha), perimeter (m) and latitude (degrees, for radiation) of each field
    f = field_shapes(fields)
    for c in ("farmer_id", "declared_area_mu", "crop", "region"):
        f[c] = fields[c].to_numpy() if c in fields.columns else None
    f["region"] = f["region"].where(f["region"].notna(), region)

    # ---- seasons
    if phenology is None:
        from .seasons import phenology as _phen
        phen = _phen(series, index=index, as_of=as_of)
    else:
        phen = pd.DataFrame(phenology).copy()
    if "season" not in phen.columns:
        phen["season"] = phen.groupby("field_id").cumcount() + 1
    for c in ("sos", "pos", "eos"):
        if c not in phen.columns:
            phen[c] = pd.NaT
        phen[c] = pd.to_datetime(phen[c])
    phen = phen[phen["field_id"].isin(f["field_id"])]
    # fields without any phenology row still get one NO_SEASON row
    missing = f.loc[~f["field_id"].isin(phen["field_id"]), "field_id"]
    if len(missing):
        phen = pd.concat([phen, pd.DataFrame({"field_id": missing.to_numpy(), "season": 1,
                                              "flags": "NO_SEASON"})], ignore_index=True)
    phen = phen.sort_values(["field_id", "season"], kind="stable").reset_index(drop=True)
    if season is not None:
        if isinstance(season, (tuple, list)) and len(season) == 2:
            lo, hi = pd.Timestamp(season[0]), pd.Timestamp(season[1])
            phen = phen[(phen["pos"] >= lo) & (phen["pos"] <= hi)]
        else:
            phen = phen[phen["season"] == int(season)]
    phen = phen.merge(f, on="field_id", how="left", suffixes=("", "_field"))
    if "flags" not in phen.columns:
        phen["flags"] = ""

    # ---- crops per season
    crop_col, prob_col, crop_flags = [], [], []
    cmap = None
    if crops is not None:
        cr = pd.DataFrame(crops)
        keys = ["field_id", "season"] if "season" in cr.columns else ["field_id"]
        cmap = {tuple(k) if len(keys) > 1 else (k,): row for k, row in
                zip(cr[keys].itertuples(index=False, name=None), cr.to_dict("records"))}
    n_seasons = phen.groupby("field_id")["season"].transform("count").to_numpy()
    rank = phen.groupby("field_id").cumcount().to_numpy()
    for i, r in phen.iterrows():
        fl = []
        crop_i: Any = None  # crop id from ``crops`` (may be a NaN from a table), else declared
        p = np.nan
        if cmap is not None:
            row = cmap.get((r["field_id"], r["season"])) or cmap.get((r["field_id"],))
            if row is not None:
                crop_i = row.get("crop")
                p = float(row.get("crop_prob", np.nan)) if row.get("crop_prob") is not None \
                    else np.nan
                fl += split_flags(row.get("flags"))
                if np.isfinite(p) and p < min_crop_prob:
                    fl.append("CROP_UNCERTAIN")
        if crop_i is None or (isinstance(crop_i, float) and math.isnan(crop_i)):
            decl = _split_declared(r.get("crop"))
            crop_i = _declared_crop_for(decl, int(rank[i]), int(n_seasons[i]), r.get("pos"),
                                   r["region"], reg)
            if crop_i is not None:
                fl.append("CROP_DECLARED")
            elif decl:
                fl.append("CROP_UNCERTAIN")
        if crop_i == "fallow":
            fl.append("NO_MODEL")
        crop_col.append(crop_i)
        prob_col.append(p)
        crop_flags.append(fl)
    phen["crop_id"] = crop_col
    phen["crop_prob"] = prob_col

    # ---- as_of: no yield before the season ends
    inc = np.zeros(len(phen), dtype=bool)
    if as_of is not None:
        t_as = pd.Timestamp(as_of)
        inc = (phen["eos"].isna() & phen["sos"].notna()) | (phen["eos"] > t_as)
        inc = inc.to_numpy()

    # ---- yield per model
    seasons_in = pd.DataFrame({"field_id": phen["field_id"], "season": phen["season"],
                               "crop": phen["crop_id"], "sos": phen["sos"], "eos": phen["eos"],
                               "region": phen["region"], "lat": phen["lat"],
                               "flags": phen["flags"].fillna("")})
    # the field's size and boundary: the edge covariate of yield models trained with it
    seasons_in["area_ha"] = phen["area_ha"]
    seasons_in["perimeter_m"] = phen["perimeter_m"]
    if "n_obs" in phen.columns:
        seasons_in["n_obs"] = phen["n_obs"]
    if "complete" in phen.columns:
        seasons_in["complete"] = phen["complete"]
    if isinstance(pool_by, str):
        if pool_by not in fields.columns:
            from .errors import ModelError

            raise ModelError(f"pool_by={pool_by!r} is not a column of fields")
        pool_by = dict(zip(fields["field_id"].to_numpy(), fields[pool_by].to_numpy()))
    models = dict(model) if isinstance(model, Mapping) else None
    pred_parts = []
    if models is None:
        assert not isinstance(model, Mapping)
        pred_parts.append(model.predict(series, seasons_in,
                                        **_wx_kw(model, weather, pool_by, covariates)))
    else:
        for c, g in seasons_in.groupby(seasons_in["crop"].fillna("<none>"), sort=False):
            m = models.get(c)
            if m is None:
                continue
            pred_parts.append(m.predict(series, g.reset_index(drop=True),
                                        **_wx_kw(m, weather, pool_by, covariates)))
    pred = pd.concat(pred_parts, ignore_index=True) if pred_parts else pd.DataFrame(
        columns=["field_id", "season"])
    pred = pred.drop(columns=[c for c in ("crop", "sos", "pos", "eos") if c in pred.columns])
    out = phen.merge(pred, on=["field_id", "season"], how="left", suffixes=("", "_pred"))
    # ---- assemble
    rows = []
    scene_attr = series.attrs.get("scene_ids") if hasattr(series, "attrs") else None
    for i, r in out.iterrows():
        fl = list(crop_flags[i]) + split_flags(r.get("flags_pred")) + split_flags(r.get("flags"))
        crop = r["crop_id"]
        p10, p50, p90 = (float(r.get(k, np.nan)) if pd.notna(r.get(k, np.nan)) else np.nan
                         for k in ("yield_t_ha_p10", "yield_t_ha_p50", "yield_t_ha_p90"))
        if pd.isna(r.get("model_version")) or crop is None:
            if crop is None:
                fl.append("CROP_UNCERTAIN" if _split_declared(r.get("crop")) else "NO_MODEL")
            else:
                fl.append("NO_MODEL")
        if inc[i]:
            fl.append("SEASON_INCOMPLETE")
            p10 = p50 = p90 = np.nan
        a = float(r["area_ha"])
        px = a * 10_000.0 / 100.0
        if px < 1.0:
            fl.append("SUBPIXEL_FIELD")
            p10 = p50 = p90 = np.nan
        elif a < min_area_ha or px < min_pixels:
            fl.append("FIELD_TOO_SMALL")
        decl = r.get("declared_area_mu")
        if decl is not None and pd.notna(decl) and float(decl) > 0:
            if abs(float(decl) / MU_PER_HA - a) > area_tolerance * a:
                fl.append("AREA_MISMATCH")
        # harvest date: EOS, else the calendar's harvest window midpoint
        eos = r["eos"]
        harvest = eos if pd.notna(eos) else pd.NaT
        if pd.isna(harvest) and crop in reg and pd.notna(r.get("sos")):
            cal = reg[crop].calendar(r["region"])
            if cal is not None:
                a0, a1 = cal.harvest_doy
                mid = (a0 + ((a1 - a0) % 366) / 2.0) % 366 or 1
                base = pd.Timestamp(year=pd.Timestamp(r["sos"]).year, month=1, day=1)
                harvest = base + pd.Timedelta(days=float(mid) - 1)
                if harvest < r["sos"]:
                    harvest = harvest + pd.DateOffset(years=1)
        # price
        price_rec = None
        pdate = as_of if as_of is not None else (harvest if pd.notna(harvest) else None)
        if crop is not None:
            try:
                price_rec = table.lookup(crop, r["region"], pdate)
            except ValueError:
                price_rec = None
        price_t = price_rec["price_cny_per_t"] if price_rec else np.nan
        if price_rec is None and crop is not None and crop != "fallow":
            fl.append("NO_PRICE")
        prod = [y * a if np.isfinite(y) else np.nan for y in (p10, p50, p90)]
        val = [pr * price_t if np.isfinite(pr) and np.isfinite(price_t) else np.nan
               for pr in prod]
        q = float(r.get("quality", 0.0)) if pd.notna(r.get("quality", np.nan)) else 0.0
        if not np.isfinite(p50):
            q = 0.0
        else:
            if "FIELD_TOO_SMALL" in fl:
                q *= 0.5
            if np.isfinite(r["crop_prob"]):
                q *= float(r["crop_prob"])
            elif "CROP_DECLARED" in fl:
                q *= 0.8
        sids = ""
        if isinstance(scene_attr, Mapping):
            sids = ",".join(map(str, scene_attr.get(r["field_id"], [])))
        elif isinstance(scene_attr, (list, tuple)):
            sids = ",".join(map(str, scene_attr))
        rows.append({
            "field_id": r["field_id"], "farmer_id": r.get("farmer_id"), "season": r["season"],
            "crop": crop, "crop_prob": r["crop_prob"], "area_ha": a, "area_mu": a * MU_PER_HA,
            "declared_area_mu": decl if decl is not None and pd.notna(decl) else np.nan,
            "yield_basis": r.get("yield_basis") if pd.notna(r.get("yield_basis")) else "",
            "yield_t_ha_p10": p10, "yield_t_ha_p50": p50, "yield_t_ha_p90": p90,
            "production_t_p10": prod[0], "production_t_p50": prod[1],
            "production_t_p90": prod[2], "price_cny_per_t": price_t,
            "price_record": json.dumps(price_rec, ensure_ascii=False) if price_rec else "",
            "value_cny_p10": val[0], "value_cny_p50": val[1], "value_cny_p90": val[2],
            "sos": r.get("sos"), "pos": r.get("pos"), "eos": eos, "harvest_date": harvest,
            "n_obs": _count(r.get("n_obs_pred"), r.get("n_obs")), "quality": q,
            "model_version": r.get("model_version") if pd.notna(r.get("model_version")) else "",
            "calibration": r.get("calibration") if pd.notna(r.get("calibration")) else "",
            "flags": join_flags(fl), "scene_ids": sids,
        })
    res = pd.DataFrame(rows, columns=ESTIMATE_COLUMNS)
    # a count: integer dtype (pandas nullable Int64, <NA> only when nothing counted it)
    res["n_obs"] = pd.array(res["n_obs"].tolist(), dtype="Int64")
    for c in ("sos", "pos", "eos", "harvest_date"):
        res[c] = pd.to_datetime(res[c])
    logger.info("estimate_yield: %d field-seasons, %d with a yield", len(res),
                int(res["yield_t_ha_p50"].notna().sum()))
    return res
