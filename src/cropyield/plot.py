"""Figures (optional ``[plot]`` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._extras import require

__all__ = ["demo_figure", "plot_series"]


def _plt():
    mpl = require("matplotlib", "plot", "figures")
    mpl.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_series(series, observations=None, field_id=None, *, index="ndvi", ax=None):
    """Plot one field's smoothed daily series (line) and its observations (dots).

    Observations with no valid pixels are not drawn; their dates are marked on the x-axis.
    """
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    if field_id is None:
        field_id = series["field_id"].iloc[0]
    s = series[series["field_id"] == field_id]
    ax.plot(s["time"], s[index], lw=1.5, label=f"{index} (smoothed)")
    if observations is not None:
        o = observations[observations["field_id"] == field_id]
        times = o["time"].dt.tz_localize(None) if o["time"].dt.tz is not None else o["time"]
        ok = np.isfinite(o[index])
        ax.scatter(times[ok], o.loc[ok, index], s=10, c=o.loc[ok, "valid_fraction"],
                   cmap="viridis", vmin=0, vmax=1, label="observations (colour: valid fraction)")
        ax.plot(times[~ok], np.zeros((~ok).sum()), "|", color="0.6", label="masked dates")
    ax.set_title(f"field {field_id}")
    ax.set_ylabel(index.upper())
    ax.legend(fontsize=7, loc="upper left")
    return ax


def demo_figure(result, fields, path: str | Path) -> Path:
    """Map of P50 output value per field and the series of two example fields."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.3]})
    est = result.estimates.groupby("field_id", as_index=False)["value_cny_p50"].sum(min_count=1)
    g = fields[["field_id", "geometry"]].merge(est, on="field_id", how="left")
    g.plot(column="value_cny_p50", ax=axes[0], legend=True, cmap="YlGn",
           missing_kwds={"color": "lightgrey", "label": "withheld (flags)"},
           legend_kwds={"label": "output value P50 (CNY, all seasons)", "shrink": 0.6})
    axes[0].set_title("Output value per field")
    axes[0].set_axis_off()
    obs = result.observations
    counts = obs.groupby("field_id")["valid_fraction"].apply(lambda v: (v > 0.5).sum())
    # show a double-cropped field (two seasons found) when there is one: the typical case
    n_seasons = result.phenology.dropna(subset=["pos"]).groupby("field_id")["season"].nunique()
    double = counts[counts.index.isin(n_seasons[n_seasons >= 2].index)]
    pick = double if len(double) else counts
    fid = pick.idxmax() if len(pick) else result.series["field_id"].iloc[0]
    plot_series(result.series, obs, fid, ax=axes[1])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
