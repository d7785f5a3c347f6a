"""Growing seasons and phenology metrics from smoothed daily series (TIMESAT conventions).

Seasons are found per field as peaks of the smoothed curve separated by troughs that are
deep enough: a trough splits two seasons only if it drops at least ``min_amplitude`` index
units below *both* neighbouring peaks and at least ``min_trough_depth`` × the amplitude of
the larger neighbour (above the field's lowest value). This keeps winter wheat's pre-winter
tillering bump and dormancy dip in one season, while wheat → maize double cropping (the
curve falls to bare soil at the June harvest) gives two, and three crops a year give three.
A weaker rule (``weak_*`` options of :func:`phenology`) also keeps small second crops and
catch crops that smoothing has partly merged into the main season; a smaller peak *before*
a larger one needs the trough to reach bare soil under it (under both rules with
``bare_trough``).

Metrics per season follow TIMESAT (Jönsson & Eklundh 2002, 2004): SOS is the first day after
the left minimum on which the curve reaches ``base + f × (peak − base)`` and EOS the last day
before the right minimum on which it is still there, each side with its own base (the
minimum between this peak and the previous/next season's peak; for EOS at most
``eos_base_days`` after the peak, and never in the smoother's one-sided edge zone at the
series ends, see :func:`phenology`), ``f`` = 0.2 (``sos``/``eos``) and 0.5
(``sos50``/``eos50``); base = mean of left and right base; amplitude = peak − base; rates
between the 20 % and 80 % levels; large integral = Σ curve and small integral =
Σ max(curve − base, 0) over the days from SOS to EOS (index units × days).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._jit import njit
from ._log import logger
from .errors import CropYieldError, join_flags, split_flags
from .series import FIELD_CAUSE_FLAGS, FIELD_NOTE_FLAGS, _factorize_ids

__all__ = ["phenology", "season_stage", "STAGES", "PhenologyError"]


class PhenologyError(CropYieldError, ValueError):
    """The series table cannot be analysed (missing columns, bad options)."""


#: Growth stages reported on the ``as_of`` date, in order.
STAGES = ("not_sown", "emergence", "green_up", "peak", "senescence", "harvested", "unknown")

_DEFAULT_MIN_PEAK = {"ndvi": 0.3, "evi2": 0.2}

# flag bits
_F_LOW_OBS = 1
_F_CLOUDY = 2
_F_EXTRAP = 4
_F_PARTIAL_L = 8
_F_PARTIAL_R = 16


@njit(nogil=True)
def _fill_nan(y, out):
    """Linear interpolation over NaN gaps, constant extension at the ends. Returns #valid."""
    n = y.shape[0]
    last = -1
    nv = 0
    for i in range(n):
        if y[i] == y[i]:
            nv += 1
            if last < 0:
                for k in range(i):
                    out[k] = y[i]
            elif i - last > 1:
                for k in range(last + 1, i):
                    out[k] = y[last] + (y[i] - y[last]) * (k - last) / (i - last)
            out[i] = y[i]
            last = i
    if nv == 0:
        for k in range(n):
            out[k] = np.nan
    else:
        for k in range(last + 1, n):
            out[k] = y[last]
    return nv


@njit(nogil=True)
def _bare_trough(y, ext, typ, alive, m, k, lft, rgt):
    """Whether trough ``k`` after a smaller peak ``lft`` (before a larger ``rgt``) is bare soil.

    True when the trough lies within 25 % of the small peak's rise (above its outer base,
    the lowest point back to the previous surviving peak or the series start) of the lower
    of that outer base and the base after the larger season (the lowest point up to the
    next surviving peak or the series end). A catch crop or first crop ends at bare soil
    before the next crop is sown, the level the field returns to after that crop's
    harvest; winter wheat's dormancy dip, even deepened by cloud residue, stays above it.
    """
    n = y.shape[0]
    j = lft - 1
    while j >= 0 and not (alive[j] and typ[j] == 1):
        j -= 1
    lo = ext[j] if j >= 0 else 0
    ob = y[ext[lft]]
    for i in range(lo, ext[lft] + 1):
        if y[i] < ob:
            ob = y[i]
    j = rgt + 1
    while j < m and not (alive[j] and typ[j] == 1):
        j += 1
    hi = ext[j] if j < m else n - 1
    fb = ob
    for i in range(ext[rgt], hi + 1):
        if y[i] < fb:
            fb = y[i]
    return y[ext[k]] - fb <= 0.25 * (y[ext[lft]] - ob)


@njit(nogil=True)
def _weak_season(y, ext, typ, alive, m, k, lft, rgt, drop, weak_rel, weak_amp, weak_days):
    """Whether the lower peak beside trough ``k`` is a small season of its own.

    The lower neighbour peak must rise at least ``weak_amp`` above its outer base (the
    lowest point between it and the next surviving peak on its far side, or the series
    end), the trough must drop at least ``weak_rel`` of that rise, and the peak must stay
    above the trough's level plus half the drop for at least ``weak_days`` days. A small
    peak before the larger one also needs a bare-soil trough (:func:`_bare_trough`).
    """
    n = y.shape[0]
    if y[ext[lft]] < y[ext[rgt]]:
        w = lft
        step = -1
    else:
        w = rgt
        step = 1
    # outer base: lowest point from the weak peak to the next alive peak on the far side
    j = w + step
    while 0 <= j < m and not (alive[j] and typ[j] == 1):
        j += step
    if j < 0:
        lo, hi = 0, ext[w]
    elif j >= m:
        lo, hi = ext[w], n - 1
    elif step < 0:
        lo, hi = ext[j], ext[w]
    else:
        lo, hi = ext[w], ext[j]
    ob = y[ext[w]]
    for i in range(lo, hi + 1):
        if y[i] < ob:
            ob = y[i]
    yt = y[ext[k]]
    rise = y[ext[w]] - ob
    if rise < weak_amp or drop < weak_rel * rise:
        return False
    if step < 0 and not _bare_trough(y, ext, typ, alive, m, k, lft, rgt):
        # a small peak *before* a larger one (winter wheat's pre-winter tillering before
        # its spring peak) counts only when the trough falls back to bare soil; after a
        # larger season (second crop after harvest) the rules above suffice
        return False
    level = yt + 0.5 * drop
    a = ext[w]
    while a > 0 and y[a - 1] >= level:
        a -= 1
    b = ext[w]
    while b < n - 1 and y[b + 1] >= level:
        b += 1
    return (b - a) >= weak_days


@njit(nogil=True)
def _find_peaks(y, min_amp, min_depth, min_peak, weak_drop, weak_rel, weak_amp, weak_days,
                bare_before, peaks_out):
    """Season peaks of a curve without NaN. Returns the number written to ``peaks_out``."""
    n = y.shape[0]
    if n < 3:
        return 0
    ext = np.empty(n, dtype=np.int64)
    typ = np.empty(n, dtype=np.int64)   # +1 peak, -1 trough
    # first non-flat direction
    i0 = 1
    while i0 < n and y[i0] == y[0]:
        i0 += 1
    if i0 == n:
        return 0
    m = 0
    ext[0] = 0
    typ[0] = -1 if y[i0] > y[0] else 1
    m = 1
    direction = 1 if y[i0] > y[0] else -1
    for i in range(i0, n - 1):
        if direction > 0 and y[i + 1] < y[i]:
            ext[m] = i
            typ[m] = 1
            m += 1
            direction = -1
        elif direction < 0 and y[i + 1] > y[i]:
            ext[m] = i
            typ[m] = -1
            m += 1
            direction = 1
    ext[m] = n - 1
    typ[m] = 1 if direction > 0 else -1
    m += 1
    gmin = y[0]
    for i in range(n):
        if y[i] < gmin:
            gmin = y[i]
    alive = np.ones(m, dtype=np.bool_)
    # merge shallow internal troughs, shallowest (relative) first
    while True:
        best = np.inf
        bi = -1
        bl = -1
        br = -1
        for k in range(m):
            if not alive[k] or typ[k] != -1:
                continue
            lft = k - 1
            while lft >= 0 and not alive[lft]:
                lft -= 1
            rgt = k + 1
            while rgt < m and not alive[rgt]:
                rgt += 1
            if lft < 0 or rgt >= m:
                continue
            yl = y[ext[lft]]
            yr = y[ext[rgt]]
            yt = y[ext[k]]
            drop = min(yl, yr) - yt
            big = max(yl, yr) - gmin
            rel = drop / big if big > 0 else 0.0
            shallow = drop < min_amp or rel < min_depth
            if not shallow and yl < yr and bare_before:
                # a smaller peak before a larger one: a season only on a bare-soil trough
                shallow = not _bare_trough(y, ext, typ, alive, m, k, lft, rgt)
            weak = False
            if weak_rel > 0 and drop >= weak_drop and shallow:
                weak = _weak_season(y, ext, typ, alive, m, k, lft, rgt, drop, weak_rel,
                                    weak_amp, weak_days)
            if shallow and not weak:
                score = rel
                if score < best:
                    best = score
                    bi = k
                    bl = lft
                    br = rgt
        if bi < 0:
            break
        alive[bi] = False
        if y[ext[bl]] < y[ext[br]]:
            alive[bl] = False
        else:
            alive[br] = False
    # keep peaks that rise at least min_amp above the lowest point on either side
    np_ = 0
    for k in range(m):
        if alive[k] and typ[k] == 1:
            peaks_out[np_] = ext[k]
            np_ += 1
    # an isolated peak (no internal trough) must still have enough amplitude
    cand = peaks_out[:np_].copy()
    kept = 0
    for j in range(np_):
        p = cand[j]
        a = cand[j - 1] if j > 0 else 0
        b = cand[j + 1] if j + 1 < np_ else n - 1
        lmin = y[p]
        for i in range(a, p + 1):
            if y[i] < lmin:
                lmin = y[i]
        rmin = y[p]
        for i in range(p, b + 1):
            if y[i] < rmin:
                rmin = y[i]
        if y[p] - min(lmin, rmin) >= min_amp and y[p] >= min_peak:
            peaks_out[kept] = p
            kept += 1
    return kept


def _find_peaks_ref(y, min_amp, min_depth, min_peak, weak_drop=0.05, weak_rel=0.25,
                    weak_amp=0.2, weak_days=30.0, bare_before=True):
    """NumPy/Python reference twin of :func:`_find_peaks` (returns the peak indices)."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    if n < 3:
        return np.zeros(0, dtype=np.int64)
    d = np.sign(np.diff(y))
    nz = np.flatnonzero(d)
    if len(nz) == 0:
        return np.zeros(0, dtype=np.int64)
    # extremes: index 0, every direction change (last index of a run), n - 1
    ext = [(0, -1 if d[nz[0]] > 0 else 1)]
    cur = d[nz[0]]
    for i in range(nz[0] + 1, n - 1):
        if d[i] != 0 and d[i] != cur:
            ext.append((i, 1 if cur > 0 else -1))
            cur = d[i]
    ext.append((n - 1, 1 if cur > 0 else -1))
    gmin = y.min()
    alive = list(range(len(ext)))      # positions into ext still alive, in order

    def bare(pos):
        """The trough at alive[pos] after a smaller peak comes down to bare soil."""
        k, lft, rgt = alive[pos], alive[pos - 1], alive[pos + 1]
        prev = [e for e in alive if ext[e][1] == 1 and e < lft]
        lo = ext[prev[-1]][0] if prev else 0
        ob = y[lo:ext[lft][0] + 1].min()
        far = [e for e in alive if ext[e][1] == 1 and e > rgt]
        hi = ext[far[0]][0] if far else n - 1
        fb = min(ob, y[ext[rgt][0]:hi + 1].min())
        return y[ext[k][0]] - fb <= 0.25 * (y[ext[lft][0]] - ob)

    def weak(pos):
        k = alive[pos]
        lft, rgt = alive[pos - 1], alive[pos + 1]
        yl, yr, yt = y[ext[lft][0]], y[ext[rgt][0]], y[ext[k][0]]
        drop = min(yl, yr) - yt
        before = yl < yr
        w = lft if before else rgt
        peaks_far = [e for e in alive if ext[e][1] == 1 and (e < w if before else e > w)]
        if before:
            lo = ext[peaks_far[-1]][0] if peaks_far else 0
            seg = y[lo:ext[w][0] + 1]
        else:
            hi = ext[peaks_far[0]][0] if peaks_far else n - 1
            seg = y[ext[w][0]:hi + 1]
        ob = seg.min()
        rise = y[ext[w][0]] - ob
        if rise < weak_amp or drop < weak_rel * rise:
            return False
        if before and not bare(pos):
            return False
        above = y >= yt + 0.5 * drop
        p = ext[w][0]
        a = p
        while a > 0 and above[a - 1]:
            a -= 1
        b = p
        while b < n - 1 and above[b + 1]:
            b += 1
        return (b - a) >= weak_days

    while True:
        best, bpos = np.inf, -1
        for pos in range(1, len(alive) - 1):
            k = alive[pos]
            if ext[k][1] != -1:
                continue
            yl, yr = y[ext[alive[pos - 1]][0]], y[ext[alive[pos + 1]][0]]
            yt = y[ext[k][0]]
            drop = min(yl, yr) - yt
            big = max(yl, yr) - gmin
            rel = drop / big if big > 0 else 0.0
            shallow = drop < min_amp or rel < min_depth
            if not shallow and yl < yr and bare_before:
                shallow = not bare(pos)
            if shallow:
                if weak_rel > 0 and drop >= weak_drop and weak(pos):
                    continue
                if rel < best:
                    best, bpos = rel, pos
        if bpos < 0:
            break
        yl = y[ext[alive[bpos - 1]][0]]
        yr = y[ext[alive[bpos + 1]][0]]
        drop_pos = bpos - 1 if yl < yr else bpos + 1
        for q in sorted((bpos, drop_pos), reverse=True):
            del alive[q]
    cand = [ext[e][0] for e in alive if ext[e][1] == 1]
    out = []
    for j, p in enumerate(cand):
        a = cand[j - 1] if j > 0 else 0
        b = cand[j + 1] if j + 1 < len(cand) else n - 1
        if y[p] - min(y[a:p + 1].min(), y[p:b + 1].min()) >= min_amp and y[p] >= min_peak:
            out.append(p)
    return np.asarray(out, dtype=np.int64)


@njit(nogil=True)
def _cross_up(y, lo, p, level):
    """Fractional index where y first reaches ``level`` going forward from ``lo`` to ``p``."""
    for j in range(lo, p):
        if y[j + 1] >= level:
            if y[j] >= level:
                return float(j)
            d = y[j + 1] - y[j]
            return j + ((level - y[j]) / d if d > 0 else 0.0)
    return np.nan


@njit(nogil=True)
def _cross_down(y, p, hi, level):
    """Fractional index where y is last at ``level`` going back from ``hi`` to ``p``."""
    for j in range(hi, p, -1):
        if y[j - 1] >= level:
            if y[j] >= level:
                return float(j)
            d = y[j - 1] - y[j]
            return j - ((level - y[j]) / d if d > 0 else 0.0)
    return np.nan


@njit(nogil=True)
def _phenology_all(Y, G, S, min_amp, min_depth, min_peak, weak_drop, weak_rel, weak_amp,
                   weak_days, bare_before, f_lo, f_hi, min_obs, cloudy_gap, extrap_gap, base_r, E,
                   out_f, out_i, n_seasons, n_cut):
    """Seasons and metrics for every field.

    ``out_f[f, s, :]`` = pos, sos, sos50, eos50, eos, peak, base_l, base_r, greenup,
    senescence, large, small, min_support, t80l, t80r; ``out_i[f, s, :]`` = n_obs, flags.
    """
    nf, n = Y.shape
    y = np.empty(n)
    peaks = np.empty(n, dtype=np.int64)
    for f in range(nf):
        n_seasons[f] = 0
        nv = _fill_nan(Y[f], y)
        if nv == 0:
            n_seasons[f] = -1
            continue
        k = _find_peaks(y, min_amp, min_depth, min_peak, weak_drop, weak_rel, weak_amp,
                        weak_days, bare_before, peaks)
        if k > out_f.shape[1]:
            n_cut[0] += 1
            k = out_f.shape[1]
        # the field's lowest level, outside the smoother's edge zones (a fit that follows
        # one dark first or last date down would make every season look cut)
        e0 = min(int(E[f]), (n - 1) // 2)
        gmin = y[e0]
        for i in range(e0, n - e0):
            if y[i] < gmin:
                gmin = y[i]
        n_seasons[f] = k
        for s in range(k):
            p = peaks[s]
            a = peaks[s - 1] if s > 0 else 0
            b = peaks[s + 1] if s + 1 < k else n - 1
            pk = y[p]
            lm = p
            for i in range(a, p + 1):
                if y[i] < y[lm]:
                    lm = i
            rm = p
            for i in range(b, p - 1, -1):
                if y[i] < y[rm]:
                    rm = i
            flags = 0
            # bases for the dates: the right one within ``base_r`` days after the peak, and
            # neither inside the smoother's one-sided edge zone (``E[f]`` days at each
            # series end)
            a2 = a
            if a2 == 0 and E[f] > 0:
                a2 = min(int(E[f]), p)
            lm2 = lm
            if a2 > a:
                lm2 = p
                for i in range(a2, p + 1):
                    if y[i] < y[lm2]:
                        lm2 = i
            b2 = b
            cut = False
            if b2 - p > base_r:
                b2 = p + int(base_r)
                cut = True
            if b2 == n - 1 and E[f] > 0:
                b2 = max(n - 1 - int(E[f]), p)
            rm2 = rm
            if b2 < b:
                rm2 = p
                for i in range(b2, p - 1, -1):
                    if y[i] < y[rm2]:
                        rm2 = i
                # still senescing at the window's limit (falling by more than 5 % of the
                # amplitude in its last 10 days): slow dry-down, the whole side counts
                if cut and rm2 == b2 and b2 - 10 > p and \
                        y[b2 - 10] - y[b2] > 0.05 * (pk - y[b2]):
                    rm2 = rm
                    if E[f] > 0 and b == n - 1:
                        rm2 = p
                        for i in range(max(n - 1 - int(E[f]), p), p - 1, -1):
                            if y[i] < y[rm2]:
                                rm2 = i
            # a side is cut by the series limits when its base is the series end and the
            # curve there is still well above the season's other base (the field's lowest
            # level when that side reaches the series end too); cut sides keep the plain
            # minimum
            ref = y[rm2] if rm != n - 1 else gmin
            part_l = (p == 0) or (lm == 0 and y[0] - ref > f_lo * (pk - ref))
            ref = y[lm2] if lm != 0 else gmin
            part_r = (p == n - 1) or (rm == n - 1 and y[n - 1] - ref > f_lo * (pk - ref))
            if not part_l:
                lm = lm2
            if not part_r:
                rm = rm2
            bl = y[lm]
            br = y[rm]
            if part_l:
                flags |= _F_PARTIAL_L
            if part_r:
                flags |= _F_PARTIAL_R
            if part_l:
                sos = np.nan
                sos50 = np.nan
                t80l = np.nan
            else:
                sos = _cross_up(y, lm, p, bl + f_lo * (pk - bl))
                sos50 = _cross_up(y, lm, p, bl + 0.5 * (pk - bl))
                t80l = _cross_up(y, lm, p, bl + f_hi * (pk - bl))
            if part_r:
                eos = np.nan
                eos50 = np.nan
                t80r = np.nan
            else:
                eos = _cross_down(y, p, rm, br + f_lo * (pk - br))
                eos50 = _cross_down(y, p, rm, br + 0.5 * (pk - br))
                t80r = _cross_down(y, p, rm, br + f_hi * (pk - br))
            if part_l and not part_r:
                base = br
            elif part_r and not part_l:
                base = bl
            else:
                base = 0.5 * (bl + br)
            gr = (f_hi - f_lo) * (pk - bl) / (t80l - sos) if t80l - sos > 0 else np.nan
            sr = (f_hi - f_lo) * (pk - br) / (eos - t80r) if eos - t80r > 0 else np.nan
            i0 = int(np.ceil(sos)) if sos == sos else 0
            i1 = int(np.floor(eos)) if eos == eos else n - 1
            if p == 0:
                pos = np.nan
            elif p == n - 1:
                # still at its maximum at the series end: a peak only if the curve has been
                # on a plateau (within 2 % of the amplitude) for more than 10 days
                q = p
                while q > lm and y[q - 1] >= pk - 0.02 * (pk - bl):
                    q -= 1
                pos = float(q) if (n - 1 - q) > 10 else np.nan
            else:
                pos = float(p)
            large = 0.0
            small = 0.0
            nob = 0
            minsup = np.inf
            wide = 0
            maxgap = 0.0
            for i in range(i0, i1 + 1):
                large += y[i]
                if y[i] > base:
                    small += y[i] - base
                if G[f, i] == 0:
                    nob += 1
                if S[f, i] < minsup:
                    minsup = S[f, i]
                if G[f, i] > cloudy_gap:
                    wide += 1
                if G[f, i] > maxgap:
                    maxgap = G[f, i]
            nd = i1 - i0 + 1
            if nd <= 0:
                minsup = np.nan
            if nob < min_obs:
                flags |= _F_LOW_OBS
            if nd > 0 and (wide > 0.5 * nd or maxgap > 4 * cloudy_gap):
                flags |= _F_CLOUDY
            # key dates extrapolated far from any observation
            keyd = np.array([sos, float(p), eos])
            for t in keyd:
                if t == t:
                    it = int(round(t))
                    if it >= 0 and it < n and G[f, it] > extrap_gap:
                        flags |= _F_EXTRAP
            o = out_f[f, s]
            o[0] = pos
            o[1] = sos
            o[2] = sos50
            o[3] = eos50
            o[4] = eos
            o[5] = pk
            o[6] = bl
            o[7] = br
            o[8] = gr
            o[9] = sr
            o[10] = large
            o[11] = small
            o[12] = minsup
            o[13] = t80l
            o[14] = t80r
            out_i[f, s, 0] = nob
            out_i[f, s, 1] = flags


def _edge_days(series: pd.DataFrame, fidx: np.ndarray, nf: int, G: np.ndarray) -> np.ndarray:
    """Days at each series end where a Whittaker fit is one-sided, per field.

    3 × the smoother's length scale ``(λ / ρ)^(1/4)`` days, λ from the series' ``lam``
    column and ρ the fraction of days with a clear observation (``gap_days == 0``); 0 when
    the series has no ``lam`` column (not a :func:`smooth_series` output).
    """
    if "lam" not in series.columns:
        return np.zeros(nf)
    lam = np.full(nf, np.nan)
    lam[fidx] = series["lam"].to_numpy(dtype=np.float64, na_value=np.nan)
    rho = (G == 0).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = 3.0 * (lam / rho) ** 0.25
    return np.where(np.isfinite(e), e, 0.0)


def _row_mean(a: np.ndarray) -> np.ndarray:
    ok = np.isfinite(a)
    cnt = ok.sum(axis=1)
    tot = np.where(ok, a, 0.0).sum(axis=1)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def season_stage(as_of_day: float, sos: float, sos50: float, pos: float, eos50: float,
                 eos: float, *, peak_window: float = 10.0) -> str:
    """Growth stage of one season on a day (all arguments in the same day units; NaN unknown).

    ``not_sown`` before SOS, ``emergence`` between SOS and SOS50, ``green_up`` from SOS50
    to ``peak_window`` days before the peak, ``peak`` within ``peak_window`` days of the
    peak, ``senescence`` until EOS, ``harvested`` after EOS; ``unknown`` if the needed
    dates are missing.
    """
    t = as_of_day
    if sos == sos and t < sos:
        return "not_sown"
    if sos50 == sos50 and t < sos50:
        return "emergence"
    if pos != pos:  # peak not reached yet (curve still rising at the end)
        return "green_up" if sos50 == sos50 or sos == sos else "unknown"
    if t < pos - peak_window:
        return "green_up"
    if t <= pos + peak_window:
        return "peak"
    if eos == eos and t >= eos:
        return "harvested"
    return "senescence"


def phenology(series: pd.DataFrame, *, index: str = "ndvi", as_of=None,
              min_amplitude: float = 0.1, min_trough_depth: float = 0.3,
              min_peak: float | None = None,
              weak_amplitude: float = 0.2, weak_relative_drop: float = 0.25,
              weak_drop: float = 0.05, weak_min_days: float = 30.0,
              sos_fraction: float = 0.2, rate_fraction: float = 0.8, min_obs: int = 6,
              cloudy_gap_days: float = 10.0, extrapolated_gap_days: float = 30.0,
              id_col: str = "field_id", eos_base_days: float = 100.0,
              edge_days: float | None = None, bare_trough: bool = False) -> pd.DataFrame:
    """Growing seasons and TIMESAT-style phenology metrics per field.

    Parameters
    ----------
    series : DataFrame
        Daily series (:func:`cropyield.series.smooth_series` output): ``field_id``,
        ``time`` (tz-naive daily dates), ``<index>``; ``gap_days`` and ``support`` are used
        when present (without them every day counts as observed). Missing days/NaN inside
        a field's record are linearly interpolated; a field whose values are all NaN gets
        one ``NO_DATA, NO_SEASON`` row.
    index : str
        Column holding the (smoothed) vegetation index.
    as_of : date-like, optional
        In-season date: days after it are ignored and ``stage`` is reported on it
        (default: the last day of the series). Smooth only observations up to ``as_of``
        for an honest in-season analysis.
    min_amplitude : float
        Smallest rise (index units) that makes a season, and smallest trough drop that
        separates two seasons.
    min_peak : float, optional
        Smallest peak value of a season (index units); lower bumps (weeds, soil moisture
        on fallow land) are not seasons. Default 0.3 for ``ndvi``, 0.2 for ``evi2``, none
        for other indices.
    min_trough_depth : float
        A trough separates two seasons only if its drop below the lower neighbouring peak
        is at least this fraction of the larger neighbour's height above the field's
        lowest value (0.3 keeps winter wheat's winter dormancy inside one season).
    weak_amplitude, weak_relative_drop, weak_drop, weak_min_days
        Weak (small) seasons: a trough that fails the two rules above still separates two
        seasons when the lower neighbouring peak rises at least ``weak_amplitude`` above its
        own outer base (the lowest point on its far side), the trough drops at least
        ``weak_relative_drop`` × that rise and at least ``weak_drop`` (index units), and
        the smaller peak stays above the trough plus half the drop for ``weak_min_days``
        days or more. A small peak *before* a larger one also needs the trough to come
        back within 25 % of its rise (so winter wheat's pre-winter tillering and winter
        dormancy stay inside one season). This finds second crops and catch crops whose
        true amplitude is ≥ 0.25 above the local base and that last ≥ 60 days, which the
        smoother shrinks to ~0.15-0.2 with a partly filled trough
        (``docs/validation_crops.md``). ``weak_relative_drop=0`` turns the rule off.
    bare_trough : bool
        Also under the regular rule (``min_amplitude``/``min_trough_depth``; the weak rule
        always asks it), a smaller peak *before* a larger one is a season of its own only
        when the trough between them comes down to bare soil: within 25 % of the small
        peak's rise of the lower of its own outer base and the base after the larger
        season. A catch crop or first crop ends at bare soil before the next crop is sown;
        winter wheat's dormancy dip, deepened by undetected cloud on several winter dates,
        stays above it. Halves the spurious seasons on cloudy winter-wheat fields
        (``docs/validation_crops.md``) but also merges growth cycles of grassland and relay
        crops that never reach bare soil, hence off by default.
    sos_fraction : float
        Fraction of the amplitude for ``sos``/``eos`` (TIMESAT's 20 %).
    rate_fraction : float
        Upper level for green-up/senescence rates (rates between ``sos_fraction`` and this).
    min_obs : int
        Seasons with fewer observation days between SOS and EOS get ``LOW_OBS``.
    cloudy_gap_days : float
        ``CLOUDY_SEASON`` when more than half of the season's days are further than this
        from any clear observation (or the longest gap exceeds 4× this).
    extrapolated_gap_days : float
        ``EXTRAPOLATED`` when SOS, peak or EOS lies further than this from any observation.
    id_col : str
        Field identifier column.
    eos_base_days : float
        The right base (for EOS) is the lowest point within this many days after the peak
        (or up to the next season's peak when that comes first). Crops are at stubble or
        bare soil within about three months of peak greenness (wheat: heading to harvest
        ≈ 60 days; maize: silking to harvest 60-90 days), so a dip long after harvest
        (cloud residue in a long fallow, the smoother's edge effect) does not move EOS.
        ``np.inf`` searches up to the next peak or the series end (natural vegetation with
        longer dry-downs).
    edge_days : float, optional
        Days at each end of the series excluded from the search for a base (at the series
        start for SOS, the end for EOS): a Whittaker fit is one-sided there and follows a
        single low (cloud-darkened) date down. Default: 3 × the smoother's length scale
        ``(λ / ρ)^(1/4)`` days per field, λ from the series' ``lam`` column and ρ the
        fraction of days with a clear observation (≈ 19 days at λ = 200 and one clear date
        in 8 days); 0 for a series without ``lam`` (not :func:`smooth_series` output).
        A season cut by the series limits (``PARTIAL_SEASON``) keeps its bases.

    Returns
    -------
    DataFrame
        One row per (field_id, season): ``season`` (1, 2, ... in time order; 1 with NaN
        metrics and ``NO_SEASON`` when none), ``sos``, ``sos50``, ``pos``, ``eos50``,
        ``eos`` (Timestamps, tz-naive; NaT when cut by the series limits), ``peak`` and
        ``base``/``base_left``/``base_right``/``amplitude`` (index units), ``length_days``,
        ``greenup_rate``/``senescence_rate`` (index units per day, both positive),
        ``large_integral``/``small_integral`` (index units × days, SOS..EOS or the part
        inside the series), ``n_obs`` (observation days SOS..EOS), ``min_support``,
        ``complete`` (both SOS and EOS inside the series), ``mean_value`` (mean index
        value of the field over the whole series; lets callers tell bare fallow from
        evergreen perennials among ``NO_SEASON`` rows), ``stage`` (on ``as_of``),
        ``flags`` (``NO_SEASON``, ``NO_DATA``, ``LOW_OBS``, ``CLOUDY_SEASON``,
        ``EXTRAPOLATED``, ``PARTIAL_SEASON``).

    Raises
    ------
    PhenologyError
        Missing columns or invalid options.

    Examples
    --------
    ``series`` as in the example of :func:`cropyield.smooth_series` (one green-up, peak in
    late April):

    >>> import cropyield as cy
    >>> ph = cy.phenology(series)  # doctest: +SKIP
    >>> ph[["field_id", "season", "sos", "pos", "eos", "n_obs"]]  # doctest: +SKIP
      field_id  season        sos        pos        eos  n_obs
    0       F1       1 2025-03-25 2025-04-30 2025-06-05     15
    """
    need = [id_col, "time", index]
    missing = [c for c in need if c not in series.columns]
    if missing:
        raise PhenologyError(f"series lacks columns {missing}; pass smooth_series output "
                             f"(need {need})")
    if not 0 < sos_fraction < 0.5 or not 0.5 < rate_fraction < 1:
        raise PhenologyError("need 0 < sos_fraction < 0.5 < rate_fraction < 1")
    if min_amplitude <= 0 or not 0 <= min_trough_depth < 1:
        raise PhenologyError("need min_amplitude > 0 and 0 <= min_trough_depth < 1")
    if not eos_base_days > 0 or (edge_days is not None and not edge_days >= 0):
        raise PhenologyError("need eos_base_days > 0 and edge_days >= 0 (or None)")
    if weak_relative_drop < 0 or weak_amplitude < 0 or weak_drop < 0 or weak_min_days < 0:
        raise PhenologyError("weak-season settings must be >= 0 (weak_relative_drop=0 "
                             "turns the rule off)")
    cols = ["season", "sos", "sos50", "pos", "eos50", "eos", "peak", "base", "base_left",
            "base_right", "amplitude", "length_days", "greenup_rate", "senescence_rate",
            "large_integral", "small_integral", "n_obs", "min_support", "complete", "mean_value",
            "stage", "flags"]
    if len(series) == 0:
        return pd.DataFrame(columns=[id_col, *cols])
    t = pd.to_datetime(series["time"])
    if getattr(t.dt, "tz", None) is not None:
        t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    t = t.dt.floor("D")
    if as_of is not None:
        a = pd.Timestamp(as_of)
        if a.tzinfo is not None:
            a = a.tz_convert("UTC").tz_localize(None)
        a = a.floor("D")
        keep = (t <= a).to_numpy()
        series = series.loc[keep]
        t = t[keep]
    else:
        a = None
    fidx, ids = _factorize_ids(series[id_col], PhenologyError)
    if len(series) == 0:
        raise PhenologyError(f"no series days on or before as_of={as_of}")
    t0 = t.min()
    t1 = t.max()
    n = int((t1 - t0) / pd.Timedelta(days=1)) + 1
    nf = len(ids)
    di = ((t - t0) / pd.Timedelta(days=1)).to_numpy().astype(np.int64)
    flat = fidx.astype(np.int64) * n + di
    Y: np.ndarray = np.full(nf * n, np.nan)
    Y[flat] = series[index].to_numpy(dtype=np.float64, na_value=np.nan)
    G: np.ndarray = np.full(nf * n, 1e9)
    if "gap_days" in series.columns:
        G[flat] = np.nan_to_num(series["gap_days"].to_numpy(dtype=np.float64, na_value=np.nan),
                                nan=1e9)
    else:
        G[flat] = 0.0
    S: np.ndarray = np.zeros(nf * n)
    if "support" in series.columns:
        S[flat] = np.nan_to_num(series["support"].to_numpy(dtype=np.float64, na_value=np.nan))
    else:
        S[flat] = np.nan
    Y, G, S = Y.reshape(nf, n), G.reshape(nf, n), S.reshape(nf, n)
    # room for one season per 40 days (shorter seasons cannot pass the amplitude rules
    # after smoothing); more are cut and logged
    maxs = max(4, n // 40 + 2)
    out_f = np.full((nf, maxs, 15), np.nan)
    out_i = np.zeros((nf, maxs, 2), dtype=np.int64)
    n_seasons = np.zeros(nf, dtype=np.int64)
    n_cut = np.zeros(1, dtype=np.int64)
    if min_peak is None:
        min_peak = _DEFAULT_MIN_PEAK.get(index, -np.inf)
    if edge_days is None:
        E = _edge_days(series, fidx, nf, G)
    else:
        E = np.full(nf, float(edge_days))
    _phenology_all(Y, G, S, float(min_amplitude), float(min_trough_depth), float(min_peak),
                   float(weak_drop), float(weak_relative_drop), float(weak_amplitude),
                   float(weak_min_days), bool(bare_trough), float(sos_fraction),
                   float(rate_fraction), int(min_obs), float(cloudy_gap_days),
                   float(extrapolated_gap_days), float(eos_base_days), E,
                   out_f, out_i, n_seasons, n_cut)
    if n_cut[0]:
        logger.warning("phenology: %d fields had more than %d seasons; later ones dropped",
                       int(n_cut[0]), maxs)

    # flatten to rows
    ns = np.maximum(n_seasons, 1)
    fi = np.repeat(np.arange(nf), ns)
    si = np.concatenate([np.arange(k) for k in ns]) if nf else np.zeros(0, dtype=np.int64)
    has = n_seasons[fi] > 0
    F = np.where(has[:, None], out_f[fi, si], np.nan)
    ints = np.where(has[:, None], out_i[fi, si], 0)
    day = pd.Timedelta(days=1)

    def to_time(x):
        r = np.round(x)
        res = pd.Series(pd.NaT, index=range(len(x)), dtype="datetime64[ns]")
        ok = np.isfinite(r)
        res[ok] = t0 + pd.to_timedelta(r[ok], unit="D")
        return res.to_numpy()

    bl, br = F[:, 6], F[:, 7]
    part_l = (ints[:, 1] & _F_PARTIAL_L) > 0
    part_r = (ints[:, 1] & _F_PARTIAL_R) > 0
    base = np.where(part_l & ~part_r, br, np.where(part_r & ~part_l, bl, 0.5 * (bl + br)))
    df = pd.DataFrame({
        id_col: np.asarray(ids)[fi],
        "season": si + 1,
        "sos": to_time(F[:, 1]),
        "sos50": to_time(F[:, 2]),
        "pos": to_time(F[:, 0]),
        "eos50": to_time(F[:, 3]),
        "eos": to_time(F[:, 4]),
        "peak": F[:, 5],
        "base": base,
        "base_left": bl,
        "base_right": br,
        "amplitude": F[:, 5] - base,
        "length_days": np.round(F[:, 4]) - np.round(F[:, 1]),
        "greenup_rate": F[:, 8],
        "senescence_rate": F[:, 9],
        "large_integral": F[:, 10],
        "small_integral": F[:, 11],
        "n_obs": ints[:, 0],
        "min_support": F[:, 12],
        "complete": has & ~part_l & ~part_r,
        "mean_value": _row_mean(Y)[fi],
    })
    as_day = float((a - t0) / day) if a is not None else float(n - 1)
    stages = []
    flags = []
    for r in range(len(df)):
        f = fi[r]
        if n_seasons[f] <= 0:
            nodata = n_seasons[f] < 0
            stages.append("unknown" if nodata else "not_sown")
            flags.append(join_flags("NO_SEASON", "NO_DATA" if nodata else None))
            continue
        o = F[r]
        stages.append(season_stage(as_day, o[1], o[2], o[0], o[3], o[4]))
        b = ints[r, 1]
        flags.append(join_flags(
            "LOW_OBS" if b & _F_LOW_OBS else None,
            "CLOUDY_SEASON" if b & _F_CLOUDY else None,
            "EXTRAPOLATED" if b & _F_EXTRAP else None,
            "PARTIAL_SEASON" if b & (_F_PARTIAL_L | _F_PARTIAL_R) else None,
        ))
    df["stage"] = stages
    df["flags"] = flags
    # series-level NO_DATA / LOW_OBS flags and the field-level causes (why a field has no
    # data, or that its geometry was repaired) travel on
    if "flags" in series.columns:
        codes, uniq = pd.factorize(series["flags"], use_na_sentinel=False)
        for code in ("NO_DATA", "LOW_OBS", *FIELD_CAUSE_FLAGS, *FIELD_NOTE_FLAGS):
            hit = np.array([isinstance(u, str) and code in split_flags(u) for u in uniq],
                           dtype=bool)
            if not hit.any():
                continue
            ids_c = series.loc[hit[codes], id_col].unique()
            if len(ids_c):
                m = df[id_col].isin(ids_c)
                df.loc[m, "flags"] = [join_flags(x, code) for x in df.loc[m, "flags"]]
    df.attrs.update(index=index, as_of=None if a is None else str(a.date()),
                    min_amplitude=min_amplitude, min_trough_depth=min_trough_depth,
                    weak_amplitude=weak_amplitude, weak_relative_drop=weak_relative_drop,
                    weak_drop=weak_drop, weak_min_days=weak_min_days,
                    min_peak=float(min_peak), eos_base_days=eos_base_days,
                    edge_days=edge_days, bare_trough=bool(bare_trough),
                    sos_fraction=sos_fraction)
    n_none = int((n_seasons <= 0).sum())
    if n_none:
        logger.info("phenology: %d of %d fields without a season", n_none, nf)
    return df
