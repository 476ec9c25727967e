"""Unit test of the delivery backoff (`gateway.callbacks.delivery.DeliveryPolicy.backoff`)."""

from __future__ import annotations

import random

from gateway.callbacks.delivery import DeliveryPolicy


def test_backoff_doubles_with_equal_jitter_and_is_capped() -> None:
    random.seed(7)
    policy = DeliveryPolicy(timeout_s=5.0, max_attempts=10, backoff_base_s=1.0, max_backoff_s=300.0, lease_s=60.0,
                            poll_s=0.5, concurrency=4, signing_secret=None)
    for attempt in range(1, 12):
        ceiling = min(300.0, 2.0 ** (attempt - 1))
        waits = [policy.backoff(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
        assert max(waits) - min(waits) > ceiling / 4  # spread out, not one fixed value
    assert policy.backoff(10_000) <= 300.0  # no overflow for an absurd attempt count
