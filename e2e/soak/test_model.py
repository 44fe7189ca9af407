"""The soak's expectation model on its own (no Postgres): what a cut requires.

    target/pyenv/bin/python -m pytest e2e/soak -q
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from soak import NEG, POS, Soak  # noqa: E402

# id: (time COMMIT was sent, time it was acknowledged or None)
HIST = {1: (10.0, 11.0), 2: (12.0, 13.0), 3: (14.0, None), 4: (15.0, 16.0)}


def test_a_fork_at_a_time_needs_every_commit_acknowledged_before_it():
    missing, extra = Soak.compare({1}, HIST, 13.5, 13.5)
    assert missing == [(2, 12.0, 13.0)]
    assert extra == []


def test_a_fork_at_a_time_must_not_hold_a_commit_sent_after_it():
    missing, extra = Soak.compare({1, 2, 4}, HIST, 13.5, 13.5)
    assert missing == []
    assert extra == [(4, (15.0, 16.0))]


def test_a_commit_in_flight_at_the_cut_may_go_either_way():
    # 2 was sent before 12.5 and acknowledged after it.
    assert Soak.compare({1}, HIST, 12.5, 12.5) == ([], [])
    assert Soak.compare({1, 2}, HIST, 12.5, 12.5) == ([], [])


def test_a_commit_whose_acknowledgement_never_came_may_go_either_way_at_latest():
    assert Soak.compare({1, 2, 4}, HIST, 20.0, POS) == ([], [])
    assert Soak.compare({1, 2, 3, 4}, HIST, 20.0, POS) == ([], [])


def test_a_row_no_history_knows_is_always_unexpected():
    assert Soak.compare({1, 2, 4, 99}, HIST, 20.0, POS) == ([], [(99, None)])


def test_a_lost_commit_at_latest_is_reported():
    missing, _ = Soak.compare({1, 2}, HIST, 20.0, POS)
    assert missing == [(4, 15.0, 16.0)]


def test_a_resolved_history_is_exact():
    resolved = {1: (NEG, NEG), 2: (NEG, NEG)}
    assert Soak.compare({1, 2}, resolved, POS, POS) == ([], [])
    assert Soak.compare({1}, resolved, POS, POS)[0] == [(2, NEG, NEG)]
