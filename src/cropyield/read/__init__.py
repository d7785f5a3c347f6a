"""Field-centric reading of COG blocks (interim package; see _blocks)."""

from ._blocks import *  # noqa: F401,F403
from ._blocks import (  # noqa: F401
    _as_scene_list, _block_bounds, _block_sort, _blocks_wanted, _blocks_wanted_ref,
    _configured, _counting_order, _counting_order_ref, _filter_sorted, _filter_sorted_ref,
    _gather_into, _gather_into_ref, _gather_masked, _gather_masked_ref, _runs_of, _solar_day,
    make_worker_plugin, pd_times,
)
