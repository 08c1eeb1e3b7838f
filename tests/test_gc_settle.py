"""A long-running host tunes the garbage collector once started; other hosts leave it alone."""

from __future__ import annotations

import gc

from bots.core.host import YOUNG_GC_THRESHOLD, settle_garbage_collector


def test_settling_freezes_start_up_objects_and_collects_young_ones_less_often():
    threshold = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 0, "start-up objects frozen out of the collector's scans"
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
