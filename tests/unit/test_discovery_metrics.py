import numpy as np
import pytest

from discovery.metrics.discovery_metrics import (
    calls_to_recall,
    enhancement_factor,
    expected_random_calls,
    hits_needed,
)


def test_calls_to_recall_first_batch_that_reaches_the_level():
    calls = [0, 10, 20, 30, 40]
    hits = [1, 2, 5, 6, 10]
    assert hits_needed(10, 0.5) == 5
    assert calls_to_recall(calls, hits, 10, 0.5) == 20
    assert calls_to_recall(calls, hits, 10, 0.9) == 40
    assert calls_to_recall(calls, hits, 20, 0.9) is None
    assert calls_to_recall(calls, hits, 0, 0.5) is None


def test_hits_needed_rounds_up_and_needs_at_least_one():
    assert hits_needed(57, 0.5) == 29
    assert hits_needed(57, 0.9) == 52
    assert hits_needed(3, 0.1) == 1


def test_expected_random_calls_matches_simulation():
    rng = np.random.default_rng(0)
    n, k, r = 200, 8, 4
    pool = np.zeros(n, dtype=bool)
    pool[:k] = True
    draws = [int(np.flatnonzero(np.cumsum(pool[rng.permutation(n)]) >= r)[0]) + 1 for _ in range(20000)]
    assert expected_random_calls(n, k, r) == pytest.approx(np.mean(draws), rel=0.02)
    assert expected_random_calls(n, k, k + 1) is None
    assert expected_random_calls(n, k, 0) == 0.0


def test_enhancement_factor_is_one_for_the_pool_rate():
    assert enhancement_factor(5, 100, 50, 1000) == pytest.approx(1.0)
    assert enhancement_factor(20, 100, 50, 1000) == pytest.approx(4.0)
    assert enhancement_factor(1, 0, 50, 1000) is None
