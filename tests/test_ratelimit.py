"""Rate limits counted in the event loop: moving windows per key, no timer threads."""

from __future__ import annotations

import threading

from bots.core.ratelimit import RateLimiter, windows


def test_a_moving_window_per_user_and_per_chat():
    now = [0.0]
    limiter = RateLimiter("2/minute", "3/minute;5/hour", clock=lambda: now[0])
    assert limiter.check("u1", "c") is None
    assert limiter.check("u1", "c") is None
    assert limiter.check("u1", "c") == "user limit 2 per 1 minute"  # refused: not counted
    assert limiter.check("u2", "c") is None
    assert limiter.check("u3", "c") == "chat limit 3 per 1 minute"
    now[0] += 30
    assert limiter.check("u1", "other") == "user limit 2 per 1 minute"  # still within the minute
    now[0] += 31
    assert limiter.check("u1", "c") is None
    assert limiter.check("u2", "c") is None
    assert limiter.check("u3", "c") == "chat limit 5 per 1 hour"


def test_counting_starts_no_thread_and_idle_keys_are_forgotten():
    now = [0.0]
    window = windows("10/second")[0]
    threads = threading.active_count()
    for user in range(1000):
        assert window.hit(f"u{user}", now[0])
    assert threading.active_count() == threads
    now[0] += 2
    window.hit("u0", now[0])
    assert list(window._hits) == ["u0"]
