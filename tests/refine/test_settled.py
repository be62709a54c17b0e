"""When a run without --iter stops: the assignment has settled (multirefine.refine.driver.settled)."""

from __future__ import annotations

from multirefine.refine.driver import settled
from multirefine.runfolder.records import IterationStats

# The weak start's 25 iterations (BENCHMARKS.md, "Iterations until the assignment settles"):
# percent changed model, and the two models' resolutions (Å).
WEAK_START = [
    (None, 17.0, 12.0), (27.2, 13.6, 11.8), (19.9, 12.6, 11.6), (14.0, 12.0, 10.8), (8.9, 11.5, 10.9),
    (6.3, 11.1, 10.7), (5.5, 10.9, 10.2), (3.4, 10.7, 9.9), (3.8, 10.3, 9.9), (3.7, 10.1, 9.7),
    (3.2, 10.0, 9.3), (2.7, 9.8, 8.9), (2.0, 9.8, 9.0), (2.0, 9.7, 9.0), (2.2, 9.5, 8.8),
    (1.9, 9.2, 8.8), (1.8, 9.0, 8.7), (1.7, 8.9, 8.4), (1.6, 8.9, 8.2), (1.3, 8.9, 8.2),
    (0.9, 8.8, 8.2), (0.5, 8.8, 8.3), (0.6, 8.8, 8.2), (0.4, 8.8, 8.3), (0.2, 8.8, 8.2),
]


def history(rows) -> list[IterationStats]:
    return [IterationStats(i, 1.0, 10.0, 10.0, 4.0, [1, 1], None if changed is None else changed / 100,
                           list(res), None, 0.0) for i, (changed, *res) in enumerate(rows, start=1)]


def test_the_weak_start_stops_once_few_particles_move_and_the_maps_stop_improving():
    stats = history(WEAK_START)
    stops = [n for n in range(1, len(stats) + 1) if settled(stats[:n])]
    assert stops[0] == 22  # 0.9 and 0.5 % changed, resolutions 8.9, 8.2 -> 8.8, 8.3 Å


def test_a_run_that_settles_at_once_still_does_five_iterations():
    quiet = history([(None, 8.0, 8.0)] + [(0.1, 8.0, 8.0)] * 6)
    assert [settled(quiet[:n]) for n in range(1, 8)] == [False] * 4 + [True] * 3


def test_maps_that_still_improve_keep_it_going():
    improving = history([(None, 12.0, 12.0)] + [(0.2, 12.0 * 0.95**i, 12.0) for i in range(1, 8)])
    assert not any(settled(improving[:n]) for n in range(1, 9))
