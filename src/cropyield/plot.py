"""Figures (optional ``[plot]`` extra: matplotlib).

Every helper draws on an ``ax`` you pass (or a new figure) and returns the figure or axes; none
calls ``show()``. Pass ``ax=`` to compose your own layouts; :func:`demo_figure` composes the
four panels of the demo's ``demo.png``.

- :func:`plot_series` — one field: observations, the smoothed series, masked dates (drawn as a
  rug of ticks, never as values) and phenology marks (SOS, peak, EOS);
- :func:`plot_field_map` — fields coloured by yield (t/ha), output value per mu (CNY/mu) or
  credit decision, with coordinates, a scale bar and a legend entry for every colour,
  including ``no estimate (<reason>)``;
- :func:`plot_credit_summary` — decisions, limits against expected value, reason codes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._extras import require
from .errors import split_flags

__all__ = ["demo_figure", "plot_credit_summary", "plot_field_map", "plot_series"]

#: Colours of the credit decisions.
DECISION_COLOURS = {"approve": "#1a9850", "refer": "#fdae61", "decline": "#d73027"}
#: Order in which a withheld estimate's flags are reported as its reason (first found wins).
REASON_ORDER = ("INVALID_GEOMETRY", "SUBPIXEL_FIELD", "FIELD_TOO_SMALL", "NO_DATA", "NO_SEASON",
                "CLOUDY_SEASON", "LOW_OBS", "CROP_UNCERTAIN", "NO_PRICE", "PARTIAL_SEASON")
_NO_ESTIMATE_SHADES = ("#bdbdbd", "#8c8c8c", "#e0e0e0", "#636363", "#d9d9d9", "#737373")
_NO_ESTIMATE_HATCH = ("", "//", "..", "xx", "\\\\", "++")

_MAP_COLUMNS = {
    "yield": ("yield_t_ha_p50", "yield P50 (t/ha)", "YlGn"),
    "value_per_mu": ("value_cny_per_mu_p50", "output value P50 (CNY/mu)", "YlGnBu"),
    "decision": ("decision", "credit decision", None),
}


def _plt():
    require("matplotlib", "plot", "figures")
    import matplotlib.pyplot as plt  # the backend is the user's (headless machines get Agg)

    return plt


def _naive(t: pd.Series) -> pd.Series:
    t = pd.to_datetime(t)
    return t.dt.tz_localize(None) if t.dt.tz is not None else t


def plot_series(series: pd.DataFrame, observations: pd.DataFrame | None = None,
                field_id: Any = None, *, index: str = "ndvi",
                phenology: pd.DataFrame | None = None, ax: Any = None) -> Any:
    """Plot one field's smoothed daily series, its observations and its phenology.

    Parameters
    ----------
    series : DataFrame
        Output of :func:`cropyield.smooth_series` (``field_id, time, <index>``).
    observations : DataFrame, optional
        Output of :func:`cropyield.field_observations`. Observations with a value are drawn as
        dots coloured by ``valid_fraction`` (0-1); dates whose value is NaN (every pixel
        masked, no overlap, read failure) are drawn as a rug of ticks along the bottom edge,
        never as a value.
    field_id : optional
        The field to draw (default: the first in ``series``).
    index : str
        Index column to draw (dimensionless), default ``"ndvi"``.
    phenology : DataFrame, optional
        Output of :func:`cropyield.phenology`: SOS and EOS are drawn as dashed vertical lines,
        the peak (``pos``, ``peak``) as a triangle, per season.
    ax : matplotlib Axes, optional
        Axes to draw on (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> ax = plot_series(series, obs, "f001", phenology=seasons)   # doctest: +SKIP
    >>> ax.figure.savefig("f001.png")                              # doctest: +SKIP
    """
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    if field_id is None:
        field_id = series["field_id"].iloc[0]
    s = series[series["field_id"] == field_id]
    ax.plot(_naive(s["time"]), s[index], lw=1.5, color="C0", label=f"{index} (smoothed)",
            gid="smoothed")
    if observations is not None:
        o = observations[observations["field_id"] == field_id]
        times = _naive(o["time"])
        ok = np.isfinite(o[index].to_numpy(dtype=float))
        sc = ax.scatter(times[ok], o.loc[ok, index], s=14, c=o.loc[ok, "valid_fraction"],
                        cmap="viridis", vmin=0, vmax=1, zorder=3, gid="observations",
                        label="observations (colour: valid fraction)")
        if (~ok).any():
            ax.vlines(times[~ok], 0.0, 0.05, transform=ax.get_xaxis_transform(), color="0.45",
                      lw=1, gid="masked", label=f"masked dates ({int((~ok).sum())}, no value)")
        if ok.any():
            ax.figure.colorbar(sc, ax=ax, pad=0.01, fraction=0.04, label="valid fraction")
    if phenology is not None and len(phenology):
        p = phenology[phenology["field_id"] == field_id]
        first = True
        for _, row in p.iterrows():
            for col in ("sos", "eos"):
                t = row.get(col)
                if t is not None and pd.notna(t):
                    ax.axvline(pd.Timestamp(t).tz_localize(None) if pd.Timestamp(t).tz else t,
                               ls="--", lw=0.8, color="0.3", gid=f"phen_{col}")
            if pd.notna(row.get("pos")) and pd.notna(row.get("peak")):
                pos = pd.Timestamp(row["pos"])
                ax.plot([pos.tz_localize(None) if pos.tz else pos], [row["peak"]], "v",
                        color="C3", ms=7, gid="phen_peak",
                        label="season: SOS/EOS (dashed), peak (▼)" if first else None)
                first = False
    ax.set_title(f"field {field_id}")
    ax.set_ylabel(f"{index.upper()} (-)")
    ax.set_xlabel("date")
    ax.legend(fontsize=7, loc="upper left")
    return ax


def _reason(flags: Any) -> str:
    codes = split_flags(flags) if isinstance(flags, str) else []
    for code in REASON_ORDER:
        if code in codes:
            return code
    return codes[0] if codes else "unknown"


def _join(flags: pd.Series) -> str:
    codes: list[str] = []
    for f in flags:
        codes.extend(c for c in split_flags(f if isinstance(f, str) else "") if c not in codes)
    return ",".join(codes)


def _profiles_frame(profiles: Iterable[Any]) -> pd.DataFrame:
    rows = []
    for p in profiles:
        d = p.to_dict() if hasattr(p, "to_dict") else dict(p)
        rows.append(d)
    return pd.DataFrame(rows)


def _map_table(estimates: pd.DataFrame, fields: Any, column: str, season: Any,
               profiles: Iterable[Any] | None) -> tuple[Any, str]:
    est = estimates.copy()
    title_season = ""
    if column == "decision":
        if profiles is None:
            raise ValueError("column='decision' needs profiles= (cropyield.credit.assess output)")
        prof = _profiles_frame(profiles)
        fid_farmer = fields[["field_id", "farmer_id"]] if "farmer_id" in fields else None
        if fid_farmer is None:
            raise ValueError("column='decision' needs a farmer_id column in fields")
        dec = fid_farmer.merge(prof[["farmer_id", "decision"]], on="farmer_id", how="left")
        g = fields[["field_id", "geometry"]].merge(dec[["field_id", "decision"]], on="field_id",
                                                   how="left")
        g["reason"] = np.where(g["decision"].isna(), "no profile", "")
        return g, title_season
    if column == "yield":
        if season is None and "season" in est:
            # the season most fields have a yield for (a double-cropping year has two)
            have = est.loc[np.isfinite(est["yield_t_ha_p50"].to_numpy(dtype=float)), "season"]
            counts = (have if len(have) else est["season"]).value_counts()
            season = counts.index[0] if len(counts) else None
        if season is not None:
            est = est[est["season"].astype(str) == str(season)]
            title_season = f", season {season}"
        per_field = est.groupby("field_id", as_index=False).agg(
            yield_t_ha_p50=("yield_t_ha_p50", "first"), flags=("flags", _join),
            crop=("crop", "first"))
    elif column == "value_per_mu":
        if season is not None:
            est = est[est["season"].astype(str) == str(season)]
            title_season = f", season {season}"
        else:
            title_season = ", all seasons"
        per_field = est.groupby("field_id", as_index=False).agg(
            value=("value_cny_p50", lambda v: v.sum(min_count=len(v))),
            area_mu=("area_mu", "first"), flags=("flags", _join))
        per_field["value_cny_per_mu_p50"] = per_field["value"] / per_field["area_mu"]
    else:
        raise ValueError(f"column must be one of {sorted(_MAP_COLUMNS)}, not {column!r}")
    g = fields[["field_id", "geometry"]].merge(per_field, on="field_id", how="left")
    col = _MAP_COLUMNS[column][0]
    missing = ~np.isfinite(g[col].to_numpy(dtype=float))
    reasons = np.array([_reason(f) if isinstance(f, str) else "no row for this season"
                        for f in g["flags"]],
                       dtype=object)
    g["reason"] = np.where(missing, reasons, "")
    return g, title_season


def _nice_length(x: float) -> float:
    if x <= 0 or not math.isfinite(x):
        return 0.0
    e = 10 ** math.floor(math.log10(x))
    for m in (5, 2, 1):
        if m * e <= x:
            return m * e
    return e


def add_scale_bar(ax: Any, crs: Any = None, *, fraction: float = 0.25,
                  loc: tuple[float, float] = (0.05, 0.05)) -> Any:
    """Draw a scale bar on a map axes whose coordinates are in ``crs``.

    Parameters
    ----------
    ax : matplotlib Axes
        A map drawn in ``crs`` coordinates.
    crs : pyproj CRS or anything ``pyproj.CRS.from_user_input`` takes, optional
        The map's CRS. Geographic CRSs (degrees) are converted at the map's mid-latitude
        (111 320 m per degree of longitude × cos(latitude)); ``None`` assumes metres.
    fraction : float
        Target bar length as a fraction of the map width (rounded down to 1, 2 or 5 × 10^n m).
    loc : (float, float)
        Lower-left corner of the bar in axes fractions.

    Returns
    -------
    matplotlib.lines.Line2D
        The bar (``gid="scalebar"``); its label text has ``gid="scalebar_label"``.
    """
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    metres_per_unit = 1.0
    if crs is not None:
        from pyproj import CRS

        c = CRS.from_user_input(crs)
        if c.is_geographic:
            metres_per_unit = 111_320.0 * math.cos(math.radians((y0 + y1) / 2))
        elif c.axis_info and c.axis_info[0].unit_conversion_factor:
            metres_per_unit = c.axis_info[0].unit_conversion_factor
    width_m = (x1 - x0) * metres_per_unit
    length_m = _nice_length(width_m * fraction)
    length_units = length_m / metres_per_unit
    bx = x0 + loc[0] * (x1 - x0)
    by = y0 + loc[1] * (y1 - y0)
    (bar,) = ax.plot([bx, bx + length_units], [by, by], color="k", lw=3, solid_capstyle="butt",
                     gid="scalebar")
    text = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    ax.text(bx + length_units / 2, by + 0.02 * (y1 - y0), text, ha="center", va="bottom",
            fontsize=8, gid="scalebar_label")
    return bar


def plot_field_map(estimates: pd.DataFrame, fields: Any, *, column: str = "yield",
                   season: Any = None, profiles: Iterable[Any] | None = None,
                   ax: Any = None) -> Any:
    """Map fields coloured by yield, output value per mu, or credit decision.

    Parameters
    ----------
    estimates : DataFrame
        Output of :func:`cropyield.estimate_yield` (one row per field and season).
    fields : GeoDataFrame
        The fields (``field_id``, ``geometry``; ``farmer_id`` for ``column="decision"``).
        Drawn in their own CRS, whose coordinates label the axes.
    column : {"yield", "value_per_mu", "decision"}
        ``"yield"``: ``yield_t_ha_p50`` (t/ha) of one season (``season``, default the latest);
        ``"value_per_mu"``: ``value_cny_p50`` summed over seasons (or of ``season``) divided by
        ``area_mu`` (CNY/mu); ``"decision"``: the farmer's decision from ``profiles``.
    season : optional
        Season label to map.
    profiles : list of CreditProfile or dicts, optional
        Output of :func:`cropyield.credit.assess`, for ``column="decision"``.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        The map has a colour bar (continuous columns) and legend entries for every colour:
        each decision, and ``no estimate (<reason>)`` for each reason an estimate is withheld
        (the first flag code in :data:`REASON_ORDER`).

    Examples
    --------
    >>> ax = plot_field_map(estimates, fields, column="value_per_mu")   # doctest: +SKIP
    """
    plt = _plt()
    from matplotlib.patches import Patch

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    g, title_season = _map_table(estimates, fields, column, season, profiles)
    col, label, cmap = _MAP_COLUMNS[column]
    handles: list[Any] = []
    if column == "decision":
        for dec, colour in DECISION_COLOURS.items():
            sub = g[g[col] == dec]
            if len(sub):
                sub.plot(ax=ax, color=colour, edgecolor="0.2", lw=0.3)
            handles.append(Patch(facecolor=colour, edgecolor="0.2",
                                 label=f"{dec} ({len(sub)} fields)"))
        missing = g[col].isna()
    else:
        vals = g[col].to_numpy(dtype=float)
        missing = pd.Series(~np.isfinite(vals), index=g.index)
        have = g[~missing]
        if len(have):
            import matplotlib as mpl

            # 5-95 % range: one fresh-weight crop (potato, cane) must not flatten the rest;
            # values outside are drawn at the ends of the colour bar (its arrows)
            finite = vals[np.isfinite(vals)]
            vmin, vmax = np.percentile(finite, [5, 95]) if len(finite) > 1 else (finite[0],) * 2
            if vmin == vmax:
                vmin, vmax = vmin - 0.5, vmax + 0.5
            norm = mpl.colors.Normalize(vmin=vmin, vmax=vmax)
            have.plot(column=col, ax=ax, cmap=cmap, norm=norm, edgecolor="0.2", lw=0.3)
            sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
            extend = {(False, False): "neither", (True, False): "min", (False, True): "max",
                      (True, True): "both"}[(bool(finite.min() < vmin), bool(finite.max() > vmax))]
            ax.figure.colorbar(sm, ax=ax, shrink=0.7, label=label, extend=extend)
    reasons = g.loc[missing, "reason"].value_counts()
    for i, (reason, n) in enumerate(reasons.items()):
        shade = _NO_ESTIMATE_SHADES[i % len(_NO_ESTIMATE_SHADES)]
        hatch = _NO_ESTIMATE_HATCH[(i + i // len(_NO_ESTIMATE_SHADES)) % len(_NO_ESTIMATE_HATCH)]
        sub = g[missing & (g["reason"] == reason)]
        sub.plot(ax=ax, color=shade, edgecolor="0.3", lw=0.3, hatch=hatch)
        what = "no decision" if column == "decision" else "no estimate"
        handles.append(Patch(facecolor=shade, edgecolor="0.3", hatch=hatch,
                             label=f"{what} ({reason}): {n}"))
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                  ncol=2, frameon=False)
    crs = getattr(fields, "crs", None)
    geographic = crs is not None and getattr(crs, "is_geographic", False)
    ax.set_xlabel("longitude (°E)" if geographic else "easting (m)")
    ax.set_ylabel("latitude (°N)" if geographic else "northing (m)")
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.set_aspect("equal" if not geographic else 1 / max(math.cos(math.radians(
        float(np.mean(ax.get_ylim())))), 1e-6))
    add_scale_bar(ax, crs)
    ax.set_title(f"{label}{title_season}", fontsize=10)
    return ax


def plot_credit_summary(profiles: Sequence[Any], *, fig: Any = None) -> Any:
    """Summarise credit profiles: decisions, limit against expected value, reason codes.

    Parameters
    ----------
    profiles : list of CreditProfile or dicts
        Output of :func:`cropyield.credit.assess` (or its JSON).
    fig : matplotlib Figure, optional
        Figure to draw three panels on (default: a new one).

    Returns
    -------
    matplotlib.figure.Figure
        Panels: farmers per decision; suggested limit (CNY) against expected output value P50
        (CNY) per approved farmer; farmers per reason code.

    Examples
    --------
    >>> fig = plot_credit_summary(cy.credit.assess(estimates))   # doctest: +SKIP
    """
    plt = _plt()
    if fig is None:
        fig = plt.figure(figsize=(12, 3.5))
    axes = fig.subplots(1, 3)
    _credit_panels(profiles, axes)
    fig.tight_layout()
    return fig


def _credit_panels(profiles: Sequence[Any], axes: Sequence[Any]) -> None:
    df = _profiles_frame(profiles)
    ax0, ax1, ax2 = axes
    counts = df["decision"].value_counts() if len(df) else pd.Series(dtype=int)
    names = list(DECISION_COLOURS)
    ax0.bar(names, [int(counts.get(n, 0)) for n in names],
            color=[DECISION_COLOURS[n] for n in names])
    ax0.set_ylabel("farmers")
    ax0.tick_params(axis="x", labelsize=8)
    ax0.set_title("credit decisions", fontsize=10)
    if len(df):
        ok = df["decision"] == "approve"
        ax1.scatter(df.loc[ok, "expected_value_cny_p50"], df.loc[ok, "suggested_limit_cny"],
                    s=12, color=DECISION_COLOURS["approve"], label="approved farmers")
        top = float(np.nanmax(df["expected_value_cny_p50"].to_numpy(dtype=float), initial=0.0))
        if top > 0:
            ax1.plot([0, top], [0, 0.25 * top], ls=":", color="0.4", label="25 % of value P50")
        ax1.legend(fontsize=7)
    ax1.set_xlabel("expected output value P50 (CNY)")
    ax1.set_ylabel("suggested limit (CNY)")
    ax1.set_title("limits of approved farmers", fontsize=10)
    reasons: Counter[str] = Counter()
    for rs in df.get("reasons", pd.Series(dtype=object)):
        for code in {str(r.get("code") if isinstance(r, dict) else getattr(r, "code", r))
                     for r in (rs or ())}:
            reasons[code] += 1
    top_r = reasons.most_common(8)[::-1]
    ax2.barh([r for r, _ in top_r], [n for _, n in top_r], color="0.5")
    ax2.set_xlabel("farmers")
    ax2.set_title("reason codes", fontsize=10)
    ax2.tick_params(axis="y", labelsize=7)


def _pick_field(result: Any) -> Any:
    obs = result.observations
    counts = obs.groupby("field_id")["valid_fraction"].apply(lambda v: int((v > 0.5).sum()))
    phen = result.phenology
    if phen is not None and len(phen) and "pos" in phen:
        n_seasons = phen.dropna(subset=["pos"]).groupby("field_id")["season"].nunique()
        double = counts[counts.index.isin(n_seasons[n_seasons >= 2].index)]
        if len(double):
            counts = double
    return counts.idxmax() if len(counts) else result.series["field_id"].iloc[0]


def demo_figure(result: Any, fields: Any, path: str | Path | None = None, *,
                field_id: Any = None, season: Any = None) -> Any:
    """The demo's four-panel figure: yield map, value-per-mu map, one field, credit decisions.

    Parameters
    ----------
    result : cropyield.pipeline.PipelineResult
        Output of :func:`cropyield.estimate` (observations, series, phenology, estimates,
        profiles).
    fields : GeoDataFrame
        The fields the result was computed for.
    path : str or Path, optional
        Where to save the PNG. When given the figure is saved, closed and the path returned.
    field_id : optional
        Field for the series panel (default: a double-cropped field with the most clear
        observations).
    season : optional
        Season of the yield map (default: the latest).

    Returns
    -------
    Path or matplotlib.figure.Figure
        The saved path when ``path`` is given, else the open figure.
    """
    plt = _plt()
    fig = plt.figure(figsize=(15, 10))
    gs = fig.add_gridspec(2, 6, height_ratios=[1.25, 1])
    ax_yield = fig.add_subplot(gs[0, 0:3])
    ax_value = fig.add_subplot(gs[0, 3:6])
    ax_series = fig.add_subplot(gs[1, 0:3])
    ax_dec = fig.add_subplot(gs[1, 3])
    ax_lim = fig.add_subplot(gs[1, 4])
    ax_rsn = fig.add_subplot(gs[1, 5])
    plot_field_map(result.estimates, fields, column="yield", season=season, ax=ax_yield)
    plot_field_map(result.estimates, fields, column="value_per_mu", ax=ax_value)
    fid = _pick_field(result) if field_id is None else field_id
    plot_series(result.series, result.observations, fid, phenology=result.phenology,
                ax=ax_series)
    _credit_panels(result.profiles, (ax_dec, ax_lim, ax_rsn))
    fig.tight_layout()
    if path is None:
        return fig
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
