"""Pooled season features: the mean over the fields of one group (county and season).

Opt-in (``fit_yield_model(..., pool_by=)``). Why: on crop-model winter wheat
(docs/validation_yield.md sections 7 and 9) what the observations lose against the canopy is
the *year-level* post-peak signal that every field of a weather year shares; one field's
Sentinel-2 record resolves it poorly (clouds, 5-day revisit), the mean over a group's fields
much better. The pooled features are the group means of the post-peak integrals
(:data:`POOL_SUFFIXES` of every index) over the seasons of the model's crop that share a
``pool_by`` label.

What it means for a user: **one field's estimate then depends on the other fields of its
group** (their imagery, not their yields). That suits a lender scoring a county's fields of
one season together; it does not suit scoring a single field alone (a group needs at least
:data:`MIN_POOL_SEASONS` seasons, otherwise the season gets NaN and ``FEW_POOLED``). On real
imagery the fields of one county share acquisition dates, clouds, haze and atmospheric
error; simulated that way (``cropyield.cropmodel.simulate_seasons(shared_sky=True)``) the
winter-wheat gain of pooling disappears (docs/validation_yield.md section 9, "Shared sky"):
the group mean then measures the common sky as much as the crop.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ModelError

__all__ = ["POOL_PREFIX", "POOL_SUFFIXES", "MIN_POOL_SEASONS", "pooled_feature_names",
           "is_pooled_feature", "add_pooled_features", "pool_labels"]

#: Prefix of every pooled feature name (``pool_<feature>``).
POOL_PREFIX = "pool_"
#: Window features pooled (per index): the half-amplitude integral, the first grain-fill
#: window and the post-peak integral - the year-level signal of section 7.
POOL_SUFFIXES = ("int", "fill1", "intpost")
#: Fewest seasons of a group for pooled features; fewer give NaN (flag ``FEW_POOLED``).
MIN_POOL_SEASONS = 5


def pooled_feature_names(indices: Sequence[str]) -> list[str]:
    """Names of the pooled features of ``indices`` (``pool_<index>_<suffix>``)."""
    return [f"{POOL_PREFIX}{k}_{s}" for k in indices for s in POOL_SUFFIXES]


def is_pooled_feature(name: str) -> bool:
    """Whether a model feature name is a pooled (group-mean) feature."""
    return str(name).startswith(POOL_PREFIX)


def pool_labels(pool_by, table: pd.DataFrame) -> np.ndarray:
    """Group label per row of ``table`` (which has ``field_id``) from ``pool_by``.

    ``pool_by`` is a mapping or :class:`pandas.Series` from ``field_id`` to a label (e.g.
    ``"county A 2024"``), or the name of a column of ``table`` (the seasons). Fields without
    a label get None (no pooled features).
    """
    if isinstance(pool_by, str):
        if pool_by not in table.columns:
            raise ModelError(f"pool_by={pool_by!r} is not a column of the seasons; pass a "
                             "mapping field_id -> group label (county and season) instead")
        return table[pool_by].to_numpy(object)
    if isinstance(pool_by, pd.Series):
        m = pool_by.to_dict()
    elif isinstance(pool_by, Mapping):
        m = dict(pool_by)
    else:
        raise ModelError("pool_by must be a mapping (or pandas Series) field_id -> group "
                         f"label, or a seasons column name; got {type(pool_by).__name__}")
    return np.array([m.get(f) for f in table["field_id"].to_numpy()], dtype=object)


def add_pooled_features(feats: pd.DataFrame, labels, *, indices: Sequence[str],
                        crop: str | None = None,
                        min_seasons: int = MIN_POOL_SEASONS) -> pd.DataFrame:
    """``feats`` with :func:`pooled_feature_names` columns: per row, the mean of the source
    feature over the rows (seasons of ``crop``, when given and ``feats`` has ``crop``) that
    share its label and have a finite value; NaN where fewer than ``min_seasons`` do, or
    the label is None/NaN.

    Parameters
    ----------
    feats : DataFrame
        Model feature table (:func:`cropyield.yieldmodel.empirical.model_features`).
    labels : array-like
        Group label per row of ``feats`` (:func:`pool_labels`).
    indices : sequence of str
        Indices whose :data:`POOL_SUFFIXES` window features are pooled.
    crop : str, optional
        Only seasons of this crop enter (and receive) the group means.
    min_seasons : int
        Fewest seasons with a finite value for a group mean.
    """
    out = feats.copy()
    lab = pd.Series(np.asarray(labels, dtype=object), index=out.index)
    ok = lab.notna()
    if crop is not None and "crop" in out.columns:
        ok &= out["crop"].astype(object).eq(crop)
    for name in pooled_feature_names(indices):
        src = name[len(POOL_PREFIX):]
        v = pd.to_numeric(out[src], errors="coerce") if src in out.columns else \
            pd.Series(np.nan, index=out.index)
        v = v.where(ok)
        grp = v.groupby(lab.where(ok))
        mean, cnt = grp.transform("mean"), grp.transform("count")
        out[name] = mean.where(ok & (cnt >= int(min_seasons))).astype(float)
    return out


def pool_options(indices: Sequence[str], min_seasons: int = MIN_POOL_SEASONS) -> dict[str, Any]:
    """What a model stores about its pooled features (``params["pool"]``)."""
    return {"indices": list(indices), "suffixes": list(POOL_SUFFIXES),
            "min_seasons": int(min_seasons)}
