"""Difficulty grading: sample K responses per problem from the base model, record the pass rate.

The pass rate is measured under the sampling settings training will use (temperature 1 by default),
graded by the training reward; it decides the bucket (`unsolved` 0, `hard`, `medium`, `easy`) and
whether a problem the model always solves is dropped: it would give no learning signal (all-correct
groups have zero advantage), the same rule history resampling applies during training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from srpo_megatron.rollout.sampling import DEFAULT_INSTRUCTIONS, sample_responses
from srpo_megatron.rewards.scoring import score_responses
from srpo_megatron.preprocess.schemas import Problem, Reject
from srpo_megatron.rollout.types import RolloutConfig

if TYPE_CHECKING:
    from srpo_megatron.rewards.combine import RewardScorer
    from srpo_megatron.rollout.engine import RolloutEngine

BUCKETS = ("easy", "medium", "hard", "unsolved")


def _grading_rollout() -> RolloutConfig:
    return RolloutConfig(temperature=1.0, top_p=1.0, max_response_tokens=4096, max_model_len=6144,
                         enable_sleep_mode=False)


@dataclass
class DifficultyConfig:
    """How problems are graded against the base model."""

    samples: int = 8
    """K: responses sampled per problem; the pass rate is correct / K."""
    rollout: RolloutConfig = field(default_factory=_grading_rollout)
    """vLLM sampling and sizing; the default samples like SRPO training (temperature 1, no top-p)."""
    suffixes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_INSTRUCTIONS))
    """Instruction appended to each prompt, per domain (`math`, `code`)."""
    hard_max: float = 0.25
    """Pass rates in (0, hard_max] are `hard`."""
    medium_max: float = 0.75
    """Pass rates in (hard_max, medium_max] are `medium`; above it `easy`; exactly 0 `unsolved`."""
    too_easy_at: float | None = 1.0
    """Drop problems whose pass rate is >= this as `too_easy`; 1.0 drops those the model always
    solves, None keeps every problem."""
    batch_size: int = 64
    """Problems per engine call (one progress-bar step)."""

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"difficulty samples (K) must be >= 1 (got {self.samples})")
        if not 0.0 < self.hard_max < self.medium_max < 1.0:
            raise ValueError(
                f"difficulty buckets need 0 < hard_max < medium_max < 1 (got hard_max={self.hard_max}, "
                f"medium_max={self.medium_max})"
            )
        if self.too_easy_at is not None and not 0.0 < self.too_easy_at <= 1.0:
            raise ValueError(f"difficulty too_easy_at must be in (0, 1] or None to keep all (got {self.too_easy_at})")
        if self.batch_size < 1:
            raise ValueError(f"difficulty batch_size must be >= 1 (got {self.batch_size})")

    def bucket(self, pass_rate: float) -> str:
        if pass_rate == 0.0:
            return "unsolved"
        if pass_rate <= self.hard_max:
            return "hard"
        return "medium" if pass_rate <= self.medium_max else "easy"


def grade_difficulty(
    problems: Sequence[Problem], engine: RolloutEngine, scorer: RewardScorer, config: DifficultyConfig
) -> tuple[list[Problem], list[Reject]]:
    """Set `pass_rate` and `difficulty` on every problem; return (kept, too_easy rejects)."""
    missing = sorted({p.domain for p in problems} - config.suffixes.keys())
    if missing:
        raise ValueError(f"difficulty suffixes has no entry for domains {missing}; add one (\"\" for none)")
    prompts = [p.prompt + config.suffixes[p.domain] for p in problems]
    groups = sample_responses(engine, prompts, config.samples, config.batch_size, desc="grade difficulty")
    rows = [p.record(graded=False) for p in problems]
    result = score_responses(rows, [[r.response_text for r in group] for group in groups], scorer=scorer)
    kept: list[Problem] = []
    rejects: list[Reject] = []
    for problem, scored in zip(problems, result["problems"]):
        problem.pass_rate = scored["pass_rate"]
        problem.difficulty = config.bucket(problem.pass_rate)
        if config.too_easy_at is not None and problem.pass_rate >= config.too_easy_at:
            detail = f"pass rate {problem.pass_rate:.3g} over {config.samples} samples"
            rejects.append(problem.reject("too_easy", detail))
        else:
            kept.append(problem)
    return kept, rejects
