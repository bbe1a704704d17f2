"""The value every reward function returns."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RewardResult:
    """One reward component for one response.

    `score` is in [0, 1]; `reason` is a short human-readable explanation ("correct", "timeout",
    "test 3: wrong answer") that the trainer can count and log. `scored` is False when the response
    could not be judged for reasons outside it (the sandbox kept failing): its score means nothing,
    and its group must not produce advantages.
    """

    score: float
    reason: str
    scored: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"RewardResult.score must be a finite value in [0, 1] (got {self.score!r})")

    @classmethod
    def unscored(cls, reason: str) -> RewardResult:
        """A response that could not be judged (an infrastructure failure, not a wrong answer)."""
        return cls(0.0, reason, scored=False)
