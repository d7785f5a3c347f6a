"""Tests of the trained CropClassifier (cropyield.classify): features, LightGBM learner,
calibration, safe JSON model files, monthly composites and the real WorldCereal parcels."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import load_script

import cropyield
from cropyield.classify import CropClassifier, brier_score, reliability_curve
from cropyield.errors import ModelError
from cropyield.series import smooth_series

D = pd.Timestamp
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "worldcereal"


def observations(n_per=25, seed=0, step=5, cloud=0.4, flip=0.0, year=2022):
    """Per-scene observations of three crops with different timing (ndvi, ndre, ndmi).

    ``step`` days between scenes (5: Sentinel-2 revisits; 30: monthly composites),
    ``cloud`` fraction of scenes lost, ``flip`` fraction of labels swapped at random.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(0, 365, step, dtype=float)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    rows, labels, groups = [], {}, {}
    classes = {"early": (90, 170), "mid": (140, 230), "late": (200, 300)}
    k = 0
    for cls, (a, b) in classes.items():
        for i in range(n_per):
            fid = f"{cls}{i}"
            sh = rng.normal(0, 8)
            amp = rng.uniform(0.45, 0.75)
            y = 0.15 + amp * (sig(0.08 * (t - a - sh)) - sig(0.08 * (t - b - sh)))
            ok = rng.random(len(t)) > cloud
            rows.append(pd.DataFrame({
                "field_id": fid, "time": D(f"{year}-01-01") + pd.to_timedelta(t[ok] + 14 * (step >= 30), "D"),
                "ndvi": y[ok] + rng.normal(0, 0.02, ok.sum()),
                "ndre": 0.55 * y[ok] + rng.normal(0, 0.02, ok.sum()),
                "ndmi": 0.3 * y[ok] - 0.05 + rng.normal(0, 0.02, ok.sum()),
                "valid_fraction": 1.0}))
            labels[fid] = cls if rng.random() >= flip else rng.choice(list(classes))
            groups[fid] = f"farmer{k // 3}"
            k += 1
    return pd.concat(rows, ignore_index=True), pd.Series(labels), pd.Series(groups)


def series_of(obs):
    return smooth_series(obs, index=("ndvi", "ndre", "ndmi"), min_obs=3)


@pytest.fixture(scope="module")
def fitted():
    obs, y, g = observations(n_per=20, seed=1)
    s = series_of(obs)
    train, test = y.index[::2], y.index[1::2]
    clf = CropClassifier(max_iter=60).fit(s[s.field_id.isin(train)], y[train])
    return clf, s[s.field_id.isin(test)], y[test]


def test_public_names_and_default_uses_every_index(fitted):
    clf, s_test, y_test = fitted
    assert cropyield.CropClassifier is CropClassifier
    from cropyield.identify import CropClassifier as C2
    assert C2 is CropClassifier
    assert clf.indices_ == ("ndvi", "ndre", "ndmi")
    for ix in clf.indices_:
        assert any(f.startswith(f"{ix}_") for f in clf.feature_names_)
    pred = clf.predict(s_test)
    assert (pred == y_test[pred.index]).mean() >= 0.9
    P = clf.predict_proba(s_test)
    assert list(P.columns) == ["early", "late", "mid"]
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    # explicit indices still work (public keyword)
    one = CropClassifier(("ndvi",), max_iter=30, calibrate=False).fit(s_test, y_test)
    assert one.indices_ == ("ndvi",) and not any(f.startswith("ndre") for f in one.feature_names_)


def test_save_load_round_trip_gives_identical_probabilities(fitted, tmp_path):
    clf, s_test, _ = fitted
    path = tmp_path / "clf.json"
    clf.save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "cropyield.CropClassifier" and doc["version"] == 4
    assert doc["learner"] == "lightgbm" and isinstance(doc["model"], str)
    assert doc["classes"] == ["early", "late", "mid"] and doc["versions"]["lightgbm"]
    clf2 = CropClassifier.load(path)
    pd.testing.assert_frame_equal(clf2.predict_proba(s_test), clf.predict_proba(s_test))


def test_loading_never_runs_code(fitted, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "model.pkl"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError, match="never reads pickle"):
        CropClassifier.load(bad)
    assert not marker.exists()
    clf, _, _ = fitted
    d = clf.to_dict()
    d["model"] = "tree\nnum_class=abc\n__import__('os')"
    with pytest.raises(ModelError, match="corrupt"):
        CropClassifier.from_dict(d)
    d = clf.to_dict()
    d["feature_names"] = d["feature_names"][:-1]
    with pytest.raises(ModelError, match="shapes"):
        CropClassifier.from_dict(d)
    d = clf.to_dict()
    d["config"]["__class__"] = "x"
    with pytest.raises(ModelError, match="corrupt"):
        CropClassifier.from_dict(d)


def test_old_version_1_file_gives_a_refit_message(tmp_path):
    old = {"format": "cropyield.CropClassifier", "version": 1, "config": {"indices": ["ndvi"]},
           "classes": ["a", "b"], "feature_names": ["ndvi_b00"], "fill": [0], "mean": [0],
           "scale": [1], "coef": [[0, 0]], "intercept": [0, 0]}
    p = tmp_path / "old.json"
    p.write_text(json.dumps(old))
    with pytest.raises(ModelError, match=r"refit .*CropClassifier\(\)\.fit\(series, labels\)"):
        CropClassifier.load(p)


def test_errors():
    obs, y, g = observations(n_per=3)
    s = series_of(obs)
    with pytest.raises(ModelError, match="not fitted"):
        CropClassifier().predict(s)
    with pytest.raises(ModelError, match="two classes"):
        CropClassifier().fit(s, y.map(lambda v: "x"))
    with pytest.raises(ModelError, match="lacks columns"):
        CropClassifier(("gcvi",)).fit(s, y)
    with pytest.raises(ModelError, match="no index column"):
        CropClassifier().fit(s[["field_id", "time"]], y)
    with pytest.raises(ModelError, match="not a cropyield"):
        CropClassifier.from_dict({"format": "pickle"})


def test_monthly_composites_and_next_year():
    """Monthly composites (12 values a year, 40 % missing) train a model that also
    classifies the next year's fields, sown a little later (time-shift augmentation)."""
    obs, y, _ = observations(n_per=20, seed=2, step=30, cloud=0.3)
    s = series_of(obs)
    clf = CropClassifier(max_iter=80).fit(s, y)
    obs2, y2, _ = observations(n_per=10, seed=3, step=30, cloud=0.3, year=2023)
    obs2["time"] = obs2["time"] + pd.Timedelta(days=7)
    pred = clf.predict(series_of(obs2))
    assert (pred == y2[pred.index]).mean() >= 0.9


def test_calibration_improves_brier_on_held_out_fields():
    obs, y, _ = observations(n_per=40, seed=4, flip=0.25)
    s = series_of(obs)
    tr, te = y.index[::2], y.index[1::2]
    clf = CropClassifier(max_iter=100).fit(s[s.field_id.isin(tr)], y[tr])
    assert clf.temperature_ > 1.0          # noisy labels: raw boosting is overconfident
    P = clf.predict_proba(s[s.field_id.isin(te)])
    yi = np.array([clf.classes_.index(v) for v in y[P.index]])
    T = clf.temperature_
    clf.temperature_ = 1.0
    raw = clf.predict_proba(s[s.field_id.isin(te)])
    clf.temperature_ = T
    assert brier_score(P.to_numpy(), yi) < brier_score(raw.to_numpy(), yi)
    rc = reliability_curve(P.max(axis=1).to_numpy(), P.to_numpy().argmax(1) == yi, n_bins=5)
    rc_raw = reliability_curve(raw.max(axis=1).to_numpy(), raw.to_numpy().argmax(1) == yi,
                               n_bins=5)
    assert rc["n"].sum() == len(yi) and rc.attrs["ece"] < rc_raw.attrs["ece"]


def test_grouped_cross_validation_keeps_groups_together():
    obs, y, g = observations(n_per=12, seed=5)
    cv = CropClassifier(max_iter=40, augment_days=()).cross_validate(series_of(obs), y, g,
                                                                      n_splits=3)
    assert len(cv) == len(y)
    assert (cv.groupby("group")["fold"].nunique() == 1).all()
    assert cv.attrs["accuracy"] >= 0.85 and 0 <= cv.attrs["brier"] < 0.35
    with pytest.raises(ModelError, match="groups"):
        CropClassifier().cross_validate(series_of(obs), y, g.map(lambda v: "one"), n_splits=3)


def test_real_worldcereal_parcels_flanders():
    """Real LPIS parcels (monthly composites, 65535 = no data) go through smooth_series and
    the classifier; grassland vs maize in Flanders 2021, 4-fold."""
    if not (SHARED / "month_2021_BEL_Flanders.parquet").exists():
        pytest.skip("../shared/data/worldcereal not present")
    v = load_script("validate_crops")
    obs, codes = v.load_region(SHARED, "flanders")
    assert obs["ndvi"].between(-1, 1).all() or obs["ndvi"].isna().any()
    assert (obs["valid_fraction"] == 0).any()          # no-data months are kept as NaN
    s = smooth_series(obs, index=v.INDICES, min_obs=3)
    y = codes.map(v.group_code)
    y = y[y.isin(["grassland", "maize"])]
    cv = CropClassifier(year_start="09-01", max_iter=60).cross_validate(
        s, y, pd.Series(y.index, index=y.index), n_splits=4)
    assert set(CropClassifier().fit(s, y).indices_) == set(v.INDICES)
    assert cv.attrs["accuracy"] >= 0.85    # 28 meadows vs 12 maize


def test_calibrated_probabilities_feed_identify_crops():
    """Summer maize and soybean share a calendar: the calendar alone cannot tell them apart
    or flag a wrong declaration; the classifier's probabilities can."""
    from cropyield.identify import IdentifyError, identify_crops

    phen = pd.DataFrame({
        "field_id": ["a", "b"], "season": [1, 1],
        "sos": [D("2022-06-25")] * 2, "pos": [D("2022-08-15")] * 2,
        "eos": [D("2022-10-01")] * 2, "peak": [0.82, 0.82], "base_left": [0.18, 0.18],
        "flags": ["", ""], "mean_value": [0.4, 0.4]})
    declared = {"a": "soybean", "b": "soybean"}
    plain = identify_crops(phen, region="north_china_plain", declared=declared)
    assert not plain["flags"].str.contains("CROP_MISMATCH").any()
    proba = pd.DataFrame({"summer_maize": [0.995, 0.02], "soybean": [0.005, 0.98]},
                         index=pd.Index(["a", "b"], name="field_id"))
    out = identify_crops(phen, region="north_china_plain", declared=declared,
                         crop_proba=proba).set_index("field_id")
    assert out.loc["a", "crop"] == "summer_maize" and "CROP_MISMATCH" in out.loc["a", "flags"]
    pb = plain.set_index("field_id").loc["b"]
    p_plain = pb["crop_prob"] if pb["crop"] == "soybean" else pb["crop_2_prob"] \
        if pb["crop_2"] == "soybean" else 0.0
    assert out.loc["b", "crop"] == "soybean" and out.loc["b", "crop_prob"] > p_plain + 0.2
    assert "CROP_MISMATCH" not in out.loc["b", "flags"]
    # a rotation class gives its probability to each of its crops
    rot = pd.DataFrame({"winter_wheat+summer_maize": [0.99], "winter_wheat+soybean": [0.01]},
                       index=pd.Index(["a"], name="field_id"))
    got = identify_crops(phen.iloc[:1], region="north_china_plain", crop_proba=rot)
    assert got["crop"].item() == "summer_maize"
    with pytest.raises(IdentifyError, match="no class"):
        identify_crops(phen, region="north_china_plain",
                       crop_proba=pd.DataFrame({"teff": [1.0]}, index=["a"]))


def test_em_prior_adaptation_recovers_known_priors():
    """Saerens et al. (2002) EM on exact posteriors of a constructed mixture: three classes
    with overlapping Gaussian NDVI peaks, posteriors learnt under equal priors, a new set of
    fields drawn with priors 0.7 / 0.2 / 0.1 — the EM estimate finds them and the adapted
    posteriors score better than the unadapted ones."""
    from cropyield.classify import adapt_class_priors

    rng = np.random.default_rng(7)
    mu, sd = np.array([0.45, 0.6, 0.75]), 0.08       # peak NDVI of three crops
    true = np.array([0.7, 0.2, 0.1])
    y = rng.choice(3, 6000, p=true)
    x = rng.normal(mu[y], sd)
    lik = np.exp(-0.5 * ((x[:, None] - mu[None]) / sd) ** 2)
    P = lik / lik.sum(axis=1, keepdims=True)        # Bayes posteriors under equal priors
    W, pi = adapt_class_priors(P, np.full(3, 1 / 3))
    np.testing.assert_allclose(pi, true, atol=0.03)
    np.testing.assert_allclose(W.sum(axis=1), 1.0)
    assert brier_score(W, y) < brier_score(P, y) - 0.02
    assert (W.argmax(1) == y).mean() > (P.argmax(1) == y).mean() + 0.03
    # unchanged mix: the priors stay put
    y2 = rng.choice(3, 6000, p=[1 / 3] * 3)
    x2 = rng.normal(mu[y2], sd)
    l2 = np.exp(-0.5 * ((x2[:, None] - mu[None]) / sd) ** 2)
    _, pi2 = adapt_class_priors(l2 / l2.sum(1, keepdims=True), np.full(3, 1 / 3))
    np.testing.assert_allclose(pi2, 1 / 3, atol=0.04)
    with pytest.raises(ModelError, match="one value per class"):
        adapt_class_priors(P, np.full(2, 0.5))


def test_predict_adapt_priors_on_a_new_class_mix(fitted):
    """A fitted classifier on fields of a new mix (mostly 'late'): predict_proba with
    adapt_priors=True estimates that mix from the unlabelled fields."""
    clf, _, _ = fitted
    np.testing.assert_allclose(clf.class_prior_, [1 / 3] * 3, atol=0.05)
    obs, y, _ = observations(n_per=30, seed=11)
    keep = pd.concat([y[y == "late"], y[y == "early"].iloc[:6], y[y == "mid"].iloc[:3]])
    s = series_of(obs[obs.field_id.isin(keep.index)])
    P = clf.predict_proba(s, adapt_priors=True)
    pri = P.attrs["priors"]
    assert set(pri) == set(clf.classes_)
    assert pri["late"] == pytest.approx(30 / 39, abs=0.08)
    assert pri["mid"] == pytest.approx(3 / 39, abs=0.08)
    assert (clf.predict(s, adapt_priors=True) == keep[P.index]).mean() >= 0.9


def test_align_recovers_a_region_with_another_calendar_and_level(fitted):
    """Fields of another region: the same three crops sown 25 days later and 0.08 greener in
    every index. Aligning the feature medians on the region's fields brings the accuracy
    back; without align the shifted region is misread."""
    clf, _, _ = fitted
    obs, y, _ = observations(n_per=15, seed=12)
    obs["time"] = obs["time"] + pd.Timedelta(days=25)
    for ix in ("ndvi", "ndre", "ndmi"):
        obs[ix] = obs[ix] + 0.08
    s = series_of(obs)
    plain = (clf.predict(s) == y[s.field_id.unique()]).mean()
    aligned = clf.predict(s, align=True)
    acc = (aligned == y[aligned.index]).mean()
    assert acc >= 0.85 and acc > plain + 0.15
    with pytest.raises(ModelError, match="at least 20 fields"):
        clf.predict(s[s.field_id.isin(y.index[:5])], align=True)


def test_version_2_files_still_load_and_predict(fitted, tmp_path):
    clf, s_test, _ = fitted
    d = clf.to_dict()
    assert len(d["class_prior"]) == 3 and len(d["feature_median"]) == len(d["feature_names"])
    d["version"] = 2
    del d["class_prior"], d["feature_median"]
    p = tmp_path / "v2.json"
    p.write_text(json.dumps(d))
    old = CropClassifier.load(p)
    pd.testing.assert_frame_equal(old.predict_proba(s_test), clf.predict_proba(s_test))
    for kw in ("align", "adapt_priors"):
        with pytest.raises(ModelError, match="refit"):
            old.predict_proba(s_test, **{kw: True})
    rt = CropClassifier.from_dict(json.loads(json.dumps(clf.to_dict())))
    np.testing.assert_array_equal(rt.feature_median_, clf.feature_median_)
    pd.testing.assert_frame_equal(rt.predict_proba(s_test, align=True, adapt_priors=True),
                                  clf.predict_proba(s_test, align=True, adapt_priors=True))


def _daily(obs):
    """Daily series (linear interpolation of the observations; no smoothing)."""
    out = []
    for fid, g in obs.groupby("field_id"):
        days = pd.date_range(g["time"].min(), g["time"].max(), freq="D")
        d = g.set_index("time")[["ndvi", "ndre", "ndmi"]].reindex(
            g["time"].tolist() + [t for t in days if t not in set(g["time"])]).sort_index()
        d = d.interpolate(method="time").loc[days]
        out.append(d.rename_axis("time").reset_index().assign(field_id=fid))
    return pd.concat(out, ignore_index=True)


def test_rescale_levels_equals_features_of_a_rescaled_series():
    """Level augmentation works on features: a gain g and offset o on an index's values
    must move its features exactly as recomputing them from the rescaled series does."""
    from cropyield.classify import _level_feature_kinds, _rescale_levels, series_features

    obs, _, _ = observations(n_per=4, seed=3, cloud=0.0)
    s = _daily(obs)
    ind = ("ndvi", "ndre", "ndmi")
    F = series_features(s, indices=ind)
    gain, off = np.array([1.18, 0.84, 1.05]), np.array([0.06, -0.04, 0.02])
    s2 = s.copy()
    for j, ix in enumerate(ind):
        s2[ix] = gain[j] * s2[ix] + off[j]
    F2 = series_features(s2, indices=ind).loc[F.index]
    kinds = _level_feature_kinds(list(F.columns), ind)
    moved = set(np.concatenate([np.concatenate(k) for k in kinds.values()]))
    assert {F.columns.get_loc(c) for c in ("ndvi_b10", "ndre_o03", "ndmi_q90", "ndvi_h0",
                                           "ndre_h2a", "ndmi_std", "s0_peak",
                                           "s0_amplitude")} <= moved
    assert not {F.columns.get_loc(c) for c in ("ndvi_argmax", "s0_sos", "s0_length_days",
                                               "n_seasons")} & moved
    R = _rescale_levels(F.to_numpy(), kinds, np.tile(gain, (len(F), 1)),
                        np.tile(off, (len(F), 1)))
    phen = [c for c in F.columns if c.startswith("s") and c[1].isdigit() or c == "n_seasons"]
    other = [F.columns.get_loc(c) for c in F.columns if c not in phen]
    np.testing.assert_allclose(R[:, other], F2.to_numpy()[:, other], rtol=1e-9, atol=1e-9)
    # phenology (first index): peak and amplitude move with the index, dates do not
    for c, tol in (("s0_peak", 1e-3), ("s0_amplitude", 1e-3), ("s0_sos", 1.0)):
        i = F.columns.get_loc(c)
        np.testing.assert_allclose(R[:, i], F2[c].to_numpy(), atol=tol)


def test_level_augmented_copies_have_the_stated_gains_and_offsets(fitted):
    """The extra training rows are the fields with a per-field gain within
    ``augment_gain`` and an offset within ± ``augment_offset`` × each index's spread."""
    from cropyield.classify import _level_feature_kinds

    _, s_test, y_test = fitted
    clf = CropClassifier(augment_days=(), augment_gain=(0.8, 1.25), augment_offset=0.2,
                         augment_level_copies=2, max_iter=20, calibrate=False)
    clf.indices_ = clf._resolve_indices(s_test)
    fsets = clf._feature_sets(s_test)
    ids = fsets[0].index
    clf.feature_names_ = list(fsets[0].columns)
    X, Y = clf._stack(fsets, ids, np.zeros(len(ids), dtype=int))
    n = len(ids)
    assert X.shape == (3 * n, len(clf.feature_names_)) and len(Y) == 3 * n
    X0 = fsets[0].to_numpy(float)
    np.testing.assert_array_equal(X[:n], X0)          # the fields themselves are untouched
    kinds = _level_feature_kinds(clf.feature_names_, clf.indices_)
    spread = clf._index_spread(X0, clf.indices_)
    assert np.all(spread > 0.05)
    gains, offs = [], []
    for j, (lvl, scl) in enumerate(kinds.values()):
        i_std, i_q10 = (clf.feature_names_.index(f"{clf.indices_[j]}_{c}") for c in ("std", "q10"))
        for c in (1, 2):
            Xc = X[c * n:(c + 1) * n]
            g = Xc[:, i_std] / X0[:, i_std]
            o = Xc[:, i_q10] - g * X0[:, i_q10]
            assert np.all((g >= 0.8 - 1e-9) & (g <= 1.25 + 1e-9))
            assert np.all(np.abs(o) <= 0.2 * spread[j] + 1e-9)
            # one gain and one offset per field and index: every level / scale feature agrees
            np.testing.assert_allclose(Xc[:, lvl], g[:, None] * X0[:, lvl] + o[:, None],
                                       atol=1e-9)
            np.testing.assert_allclose(Xc[:, scl], g[:, None] * X0[:, scl], atol=1e-9)
            gains.append(g)
            offs.append(o / spread[j])
    # one draw per field for every index: a greener or browner field moves them together
    for c in (1, 2):
        np.testing.assert_allclose(gains[c - 1], gains[2 * (len(kinds) - 1) + c - 1])
        np.testing.assert_allclose(offs[c - 1], offs[2 * (len(kinds) - 1) + c - 1], atol=1e-9)
    g, o = np.concatenate(gains[:2]), np.concatenate(offs[:2])     # the distinct draws
    # the draws fill the stated ranges (log-uniform gains, uniform offsets)
    assert g.min() < 0.85 and g.max() > 1.18 and abs(np.median(np.log(g))) < 0.1
    assert o.min() < -0.15 and o.max() > 0.15
    # the two copies are different draws, and a refit with the same seed is identical
    assert not np.allclose(X[n:2 * n], X[2 * n:])
    np.testing.assert_array_equal(clf._stack(fsets, ids, np.zeros(n, dtype=int))[0], X)
    # no level augmentation: copies (time-shifted ones) are left as they are
    plain = CropClassifier(augment_days=(12,), augment_gain=1.0, augment_offset=0.0)
    plain.indices_, plain.feature_names_ = clf.indices_, clf.feature_names_
    fs2 = plain._feature_sets(s_test)
    Xp, _ = plain._stack(fs2, ids, np.zeros(n, dtype=int))
    np.testing.assert_array_equal(Xp[n:], fs2[12].reindex(columns=clf.feature_names_)
                                  .to_numpy(float))
    # the default: level augmentation on the time-shifted copies, sizes as documented
    d = CropClassifier()
    assert d.augment_gain == pytest.approx((np.exp(-0.2), np.exp(0.2)))
    assert d.augment_offset == 0.2 and d.augment_level_copies == 0
    with pytest.raises(ModelError, match="augment_gain"):
        CropClassifier(augment_gain=(1.2, 0.9))
    with pytest.raises(ModelError, match="augment_offset"):
        CropClassifier(augment_offset=-0.1)


def test_version_3_files_load_without_level_augmentation(fitted, tmp_path):
    """A version-3 file (before level augmentation) loads, predicts as saved, and refits
    as it was fitted (no level augmentation); version 4 stores the settings."""
    clf, s_test, _ = fitted
    d = clf.to_dict()
    assert d["version"] == 4
    assert {"augment_gain", "augment_offset", "augment_level_copies"} <= set(d["config"])
    d["version"] = 3
    for k in ("augment_gain", "augment_offset", "augment_level_copies"):
        del d["config"][k]
    p = tmp_path / "v3.json"
    p.write_text(json.dumps(d))
    old = CropClassifier.load(p)
    pd.testing.assert_frame_equal(old.predict_proba(s_test), clf.predict_proba(s_test))
    assert old.augment_gain == (1.0, 1.0) and old.augment_offset == 0.0
    assert old.augment_level_copies == 0
    rt = CropClassifier.from_dict(json.loads(json.dumps(clf.to_dict())))
    assert rt.get_params() == clf.get_params()
