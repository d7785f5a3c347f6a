"""cropyield.plot: figures that say what they show (Agg backend, no display)."""

import matplotlib

matplotlib.use("Agg")

import geopandas as gpd  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from shapely.geometry import box  # noqa: E402

from cropyield import plot  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _fields(n=6):
    # 40 m x 30 m plots in UTM 50N, 100 m apart
    geoms = [box(375000 + 100 * i, 3812000, 375040 + 100 * i, 3812030) for i in range(n)]
    return gpd.GeoDataFrame({"field_id": [f"F{i}" for i in range(n)],
                             "farmer_id": ["A", "A", "B", "B", "C", "D"][:n]},
                            geometry=geoms, crs="EPSG:32650")


def _estimates():
    rows = []
    for i, (y, flags) in enumerate([(6.0, ""), (7.5, ""), (np.nan, "NO_SEASON"),
                                    (5.0, "LOW_OBS"), (np.nan, "FIELD_TOO_SMALL,LOW_OBS")]):
        rows.append({"field_id": f"F{i}", "season": 1, "crop": "winter_wheat",
                     "yield_t_ha_p50": y, "value_cny_p50": y * 0.12 * 2380 if y == y else np.nan,
                     "area_mu": 1.8, "flags": flags})
    return pd.DataFrame(rows)  # F5 has no estimate row at all


def _series_obs():
    days = pd.date_range("2022-03-01", "2022-07-01", freq="D")
    curve = 0.2 + 0.6 * np.exp(-(((days - days[60]).days) / 25.0) ** 2)
    series = pd.DataFrame({"field_id": "F0", "time": days, "ndvi": curve})
    t_obs = days[::5]
    v = 0.2 + 0.6 * np.exp(-(((t_obs - days[60]).days) / 25.0) ** 2)
    masked = np.zeros(len(t_obs), bool)
    masked[[2, 7, 11, 12]] = True
    obs = pd.DataFrame({"field_id": "F0", "time": t_obs.tz_localize("UTC"),
                        "ndvi": np.where(masked, np.nan, v),
                        "valid_fraction": np.where(masked, 0.0, 0.9),
                        "flags": np.where(masked, "ALL_MASKED", "")})
    phen = pd.DataFrame({"field_id": ["F0"], "season": [1], "sos": [days[30]], "pos": [days[60]],
                         "peak": [0.8], "eos": [days[90]]})
    return series, obs, phen, masked


def test_series_masked_dates_are_not_plotted_as_values():
    series, obs, phen, masked = _series_obs()
    ax = plot.plot_series(series, obs, "F0", phenology=phen)
    pts = [c for c in ax.collections if c.get_gid() == "observations"][0]
    offsets = pts.get_offsets()
    assert len(offsets) == (~masked).sum()                # only dates with a value are points
    assert np.all(np.asarray(offsets)[:, 1] > 0.1)        # none at NDVI 0
    rug = [c for c in ax.collections if c.get_gid() == "masked"]
    assert len(rug) == 1 and len(rug[0].get_segments()) == masked.sum()
    # the rug is drawn in axes coordinates along the bottom edge, not at a data value
    assert rug[0].get_transform() == ax.get_xaxis_transform()
    assert [ln for ln in ax.lines if ln.get_gid() == "phen_peak"]
    assert len([ln for ln in ax.lines if ln.get_gid() in ("phen_sos", "phen_eos")]) == 2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("masked dates (4" in s for s in labels)


def test_map_legend_has_every_colour_and_a_scale_bar():
    ax = plot.plot_field_map(_estimates(), _fields(), column="yield")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "no estimate (NO_SEASON): 1" in labels
    assert "no estimate (FIELD_TOO_SMALL): 1" in labels          # the first reason, by order
    assert any(s.startswith("no estimate (no row") for s in labels)
    # the continuous colours have a colour bar with units
    cbar_axes = [a for a in ax.figure.axes if a is not ax]
    assert any("t/ha" in a.get_ylabel() for a in cbar_axes)
    bar = [ln for ln in ax.lines if ln.get_gid() == "scalebar"]
    assert len(bar) == 1
    label = [t for t in ax.texts if t.get_gid() == "scalebar_label"][0].get_text()
    length = np.ptp(bar[0].get_xdata())                    # metres in a UTM CRS
    assert label == (f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m")
    assert "easting" in ax.get_xlabel() and "northing" in ax.get_ylabel()


def test_scale_bar_in_degrees_is_converted_to_metres():
    f = _fields().to_crs("EPSG:4326")
    ax = plot.plot_field_map(_estimates(), f, column="value_per_mu")
    bar = [ln for ln in ax.lines if ln.get_gid() == "scalebar"][0]
    deg = np.ptp(bar.get_xdata())
    lat = np.mean(ax.get_ylim())
    metres = deg * 111_320 * np.cos(np.radians(lat))
    label = [t for t in ax.texts if t.get_gid() == "scalebar_label"][0].get_text()
    assert label == f"{round(metres):g} m"
    assert "longitude" in ax.get_xlabel()


def test_decision_map_and_credit_summary():
    profiles = [{"farmer_id": "A", "decision": "approve", "suggested_limit_cny": 2000,
                 "expected_value_cny_p50": 9000.0,
                 "reasons": [{"code": "APPROVED"}, {"code": "CAP_LTV"}]},
                {"farmer_id": "B", "decision": "refer", "suggested_limit_cny": None,
                 "expected_value_cny_p50": None, "reasons": [{"code": "MISSING_DATA"}]},
                {"farmer_id": "C", "decision": "decline", "suggested_limit_cny": None,
                 "expected_value_cny_p50": 100.0, "reasons": [{"code": "LOW_DOWNSIDE_VALUE"}]}]
    ax = plot.plot_field_map(_estimates(), _fields(), column="decision", profiles=profiles)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["approve (2 fields)", "refer (2 fields)", "decline (1 fields)"]
    assert "no decision (no profile): 1" in labels               # farmer D has no profile
    fig = plot.plot_credit_summary(profiles)
    bars = fig.axes[0].patches
    assert [b.get_height() for b in bars] == [1, 1, 1]
    assert {t.get_text() for t in fig.axes[2].get_yticklabels()} == {
        "APPROVED", "CAP_LTV", "MISSING_DATA", "LOW_DOWNSIDE_VALUE"}


def test_demo_figure_writes_a_png_and_never_shows(tmp_path, monkeypatch):
    import types

    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("show() called"))
    series, obs, phen, _ = _series_obs()
    est = _estimates()
    est["farmer_id"] = ["A", "A", "B", "B", "C"]
    result = types.SimpleNamespace(estimates=est, observations=obs, series=series, phenology=phen,
                                   profiles=[{"farmer_id": "A", "decision": "approve",
                                              "suggested_limit_cny": 1000,
                                              "expected_value_cny_p50": 5000.0, "reasons": []}])
    out = plot.demo_figure(result, _fields(), tmp_path / "demo.png")
    assert out == tmp_path / "demo.png" and out.stat().st_size > 10_000
    assert not plt.get_fignums()                                   # closed after saving
    fig = plot.demo_figure(result, _fields())
    assert len(fig.axes) >= 6
