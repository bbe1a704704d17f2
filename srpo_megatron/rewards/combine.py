"""The reward the trainer sees: per-domain accuracy plus format and language terms, for a batch.

Domains (`math`, `code`) register in `REWARD_DOMAINS`; each row's `domain` picks its accuracy
scorer. Math is graded in the killable worker pool, code in sandbox processes, both at once; the
results come back in input order with each component kept so the trainer can log accuracy alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from srpo_megatron.algorithms.registry import Registry
from srpo_megatron.rewards.code import ProgramExtraction, code_reward_batch
from srpo_megatron.rewards.format import FormatConfig, format_reward, language_mixing_penalty
from srpo_megatron.rewards.math import AnswerExtraction, GradingPool
from srpo_megatron.rewards.sandbox import Sandbox, SandboxConfig
from srpo_megatron.rewards.types import RewardResult


@dataclass(frozen=True)
class RewardConfig:
    """Rule-based reward: total = accuracy_weight * accuracy + format_weight * format
    - language_penalty_weight * language_penalty, each term in [0, 1]."""

    accuracy_weight: float = 1.0
    """Weight of the accuracy term (math answer correct / code passes its tests)."""
    format_weight: float = 0.0
    """Weight of the format term. 0 by default: SRPO's published reward is accuracy only; turn it on
    for base models that must learn the think/answer layout."""
    language_penalty_weight: float = 0.0
    """Weight subtracted when a response mixes scripts beyond `language_mixing_threshold`."""
    language_mixing_threshold: float = 0.1
    """Minority-script share (CJK vs Latin, outside code and LaTeX) above which the penalty applies."""
    format: FormatConfig = field(default_factory=FormatConfig)
    """Tags (or a regex) the format term checks."""
    math_extraction: AnswerExtraction = field(default_factory=AnswerExtraction)
    """Where the final answer of a math response is taken from."""
    code_extraction: ProgramExtraction = field(default_factory=ProgramExtraction)
    """Which fenced block of a code response is the program."""
    math_timeout_s: float = 5.0
    """Hard limit per math response; a stuck grader is killed and the response scores 0."""
    math_workers: int = 2
    """Math grading processes (created on the first math batch)."""
    math_memory_mb: int | None = 4096
    """Address-space limit of each grading process; None for no limit."""
    code_workers: int = 2
    """Programs run at once, each in its own sandbox."""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """Limits for running programs: per-test timeout, memory, output cap, isolation."""
    partial_credit: bool = False
    """Code accuracy = fraction of tests passed, instead of 1 only when all pass."""

    def __post_init__(self) -> None:
        self._check_weights()
        self._check_threshold()
        self._check_resources()

    def _check_weights(self) -> None:
        for name in ("accuracy_weight", "format_weight", "language_penalty_weight"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"RewardConfig.{name} must be >= 0 (got {getattr(self, name)}); the language term "
                    "is already subtracted, set its weight positive"
                )

    def _check_threshold(self) -> None:
        if not 0.0 <= self.language_mixing_threshold <= 0.5:
            raise ValueError(
                "RewardConfig.language_mixing_threshold must be in [0, 0.5], the range of the minority "
                f"share (got {self.language_mixing_threshold})"
            )

    def _check_resources(self) -> None:
        if not self.math_timeout_s > 0:
            raise ValueError(f"RewardConfig.math_timeout_s must be > 0 seconds (got {self.math_timeout_s})")
        for name in ("math_workers", "code_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"RewardConfig.{name} must be >= 1 (got {getattr(self, name)})")


@dataclass(frozen=True)
class ScoredResponse:
    """The reward of one response and its components (each component in [0, 1])."""

    reward: float
    """Weighted total: what advantages are computed from."""
    accuracy: float
    format: float
    language_penalty: float
    reason: str
    """Why the accuracy term scored as it did ("correct", "test 2/5: timeout", ...)."""
    scored: bool = True
    """False when the accuracy could not be judged (infrastructure failure after retries): the
    reward is meaningless and the response's group gets no advantage."""


class RewardScorer:
    """Scores rollouts of `math` and `code` rows; owns the grading pool and the sandbox."""

    def __init__(self, config: RewardConfig = RewardConfig()) -> None:
        self.config = config
        self._math_pool: GradingPool | None = None
        self._sandbox: Sandbox | None = None
        self._lazy_lock = threading.Lock()

    @property
    def math_pool(self) -> GradingPool:
        """Created on first use: a code-only stage never starts grading processes."""
        with self._lazy_lock:
            if self._math_pool is None:
                cfg = self.config
                self._math_pool = GradingPool(cfg.math_workers, cfg.math_timeout_s, cfg.math_memory_mb)
            return self._math_pool

    @property
    def sandbox(self) -> Sandbox:
        """Created on first use: a math-only run works on a host that cannot isolate programs."""
        with self._lazy_lock:
            if self._sandbox is None:
                self._sandbox = Sandbox(self.config.sandbox)
            return self._sandbox

    def score(self, rows: Sequence[Mapping], responses: Sequence[str]) -> list[ScoredResponse]:
        """Score responses[i] for rows[i] (schema: `domain`, and `answer` or `tests`); input order."""
        if len(rows) != len(responses):
            raise ValueError(
                f"got {len(rows)} rows but {len(responses)} responses; pass one row per response"
            )
        by_domain: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            domain = row.get("domain")
            if domain not in REWARD_DOMAINS:
                raise ValueError(
                    f"row {row.get('id', index)!r} has unknown domain {domain!r}; valid domains: "
                    f"{REWARD_DOMAINS.names()}"
                )
            by_domain.setdefault(domain, []).append(index)
        accuracy: list[RewardResult | None] = [None] * len(rows)
        # Domains run at once: math waits on grading workers, code on sandbox processes.
        with ThreadPoolExecutor(max_workers=max(1, len(by_domain)), thread_name_prefix="srpo-reward") as pool:
            futures = {
                domain: pool.submit(
                    REWARD_DOMAINS.get(domain), self, [rows[i] for i in idx], [responses[i] for i in idx]
                )
                for domain, idx in by_domain.items()
            }
            for domain, future in futures.items():
                for index, result in zip(by_domain[domain], future.result(), strict=True):
                    accuracy[index] = result
        return [self._combine(result, response) for result, response in zip(accuracy, responses, strict=True)]

    def _combine(self, accuracy: RewardResult, response: str) -> ScoredResponse:
        cfg = self.config
        fmt = format_reward(response, cfg.format).score
        language = language_mixing_penalty(response, cfg.language_mixing_threshold).score
        total = (
            cfg.accuracy_weight * accuracy.score
            + cfg.format_weight * fmt
            - cfg.language_penalty_weight * language
        )
        return ScoredResponse(total, accuracy.score, fmt, language, accuracy.reason, accuracy.scored)

    def close(self) -> None:
        """Stop the grading workers; idempotent."""
        if self._math_pool is not None:
            self._math_pool.close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


DomainScorer = Callable[[RewardScorer, Sequence[Mapping], Sequence[str]], list[RewardResult]]
"""Accuracy for a batch of one domain's rows and their responses, in input order."""

REWARD_DOMAINS: Registry[DomainScorer] = Registry("reward domain")


def _field(rows: Sequence[Mapping], key: str, domain: str) -> list:
    missing = [row.get("id", "?") for row in rows if row.get(key) is None]
    if missing:
        raise ValueError(f"{domain} rows need the {key!r} field; missing in rows {missing[:5]}")
    return [row[key] for row in rows]


@REWARD_DOMAINS.register("math")
def _math_accuracy(
    scorer: RewardScorer, rows: Sequence[Mapping], responses: Sequence[str]
) -> list[RewardResult]:
    cfg = scorer.config
    answers = [str(answer) for answer in _field(rows, "answer", "math")]
    return scorer.math_pool.grade(responses, answers, cfg.math_extraction, cfg.math_timeout_s)


@REWARD_DOMAINS.register("code")
def _code_accuracy(
    scorer: RewardScorer, rows: Sequence[Mapping], responses: Sequence[str]
) -> list[RewardResult]:
    cfg = scorer.config
    return code_reward_batch(
        responses,
        _field(rows, "tests", "code"),
        extraction=cfg.code_extraction,
        sandbox=scorer.sandbox,
        partial_credit=cfg.partial_credit,
        workers=cfg.code_workers,
    )
