"""Capped, jittered exponential backoff for loops that wait for a backend to return."""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential backoff with jitter: ``initial``, then doubling up to
    ``cap``, each delay drawn from [50%, 100%] of that so that many processes
    restarted together do not reconnect in lockstep."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = max(cap, initial)
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0

    @property
    def worth_logging(self) -> bool:
        """Attempts 1, 2, 4, 8...: a day-long outage logs a few lines, not thousands."""
        n = self.attempt
        return n > 0 and n & (n - 1) == 0
