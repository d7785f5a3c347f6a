"""Sky-draw sensitivity of scripts/validate_yield.py (issue 17, docs/validation_yield.md §9).

Runs ``validate_yield.py`` with the observation process of the scored seasons varied while
the seasons, folds and ceiling stay the same:

* ``--sky-offset N`` - with ``--shared-sky``: the shared skies drawn from ``(seed + N,
  weather_year)`` instead of ``(seed, weather_year)`` (another draw of the same process);
* ``--atm-per-field`` - with ``--shared-sky``: dates, clouds and haze shared, the 0.004
  atmospheric noise per band drawn per field (``cropmodel._SHARED_SKY_ATM = False``);
* ``--observe-seed S`` - per-field skies redrawn: the observation step of
  ``simulate_seasons`` (clouds, haze, noise, field sizes) uses ``default_rng(S)``.

Every other argument goes to ``validate_yield.py``. Usage::

    PYTHONPATH=src python scripts/diag_sky_draws.py --sky-offset 1000 --crops winter_wheat \\
        --n 250 --n-library 250 --library shipped --repeats 1 --cuts 0 --pooled --shared-sky
"""

import argparse
import runpy
import sys
from pathlib import Path

import numpy as np

import cropyield.cropmodel as cm

ap = argparse.ArgumentParser(add_help=False)
ap.add_argument("--sky-offset", type=int, default=0)
ap.add_argument("--atm-per-field", action="store_true")
ap.add_argument("--observe-seed", type=int, default=None)
opts, rest = ap.parse_known_args()

_plan, _observe = cm._shared_sky_plan, cm._observe
if opts.sky_offset:
    cm._shared_sky_plan = (lambda groups, D, days_of, seed, **kw:
                           _plan(groups, D, days_of, seed + opts.sky_offset, **kw))
if opts.atm_per_field:
    cm._SHARED_SKY_ATM = False
if opts.observe_seed is not None:
    cm._observe = (lambda refl, days_of, fids, rng, **kw:
                   _observe(refl, days_of, fids, np.random.default_rng(opts.observe_seed),
                            **kw))
script = Path(__file__).with_name("validate_yield.py")
sys.argv = [str(script)] + rest
runpy.run_path(str(script), run_name="__main__")
