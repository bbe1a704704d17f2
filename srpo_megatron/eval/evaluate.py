"""Evaluate a model on one math or code set: k samples per problem through vLLM, graded like training.

AIME-style math reports avg@k (pass@1 estimated from k samples per problem); code (LiveCodeBench,
HumanEval, MBPP) reports pass@1 the same way, each program run against the problem's tests in the
sandbox: stdin/stdout cases, function calls, or the set's own test program.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from srpo_megatron.rollout.sampling import DEFAULT_INSTRUCTIONS, hf_model_dir, sample_responses
from srpo_megatron.rewards.scoring import score_responses
from srpo_megatron.preprocess.dedup import make_ids_unique
from srpo_megatron.preprocess.schemas import DOMAINS, read_problems
from srpo_megatron.rewards.combine import RewardConfig, RewardScorer
from srpo_megatron.rollout.types import RolloutConfig


def _eval_rollout() -> RolloutConfig:
    return RolloutConfig(temperature=0.6, top_p=0.95, max_response_tokens=4096, max_model_len=6144,
                         enable_sleep_mode=False)


@dataclass
class EvalConfig:
    """One evaluation run."""

    model: str
    """HF model directory, or a Megatron checkpoint (has `srpo_model.json`; converted to a temporary HF dir)."""
    data: str
    """Evaluation set: a local jsonl/json/parquet/csv file or a hub name `NAME[@CONFIG][:SPLIT]`, in any schema
    `preprocess.schemas` maps (AIME `Problem`/`Answer`, LiveCodeBench tests, HumanEval, MBPP, this project's rows)."""
    domain: Literal["math", "code"]
    """How responses are graded: final answer via math-verify, or program against the tests."""
    k: int = 1
    """Samples per problem; the score averages over them (avg@k)."""
    rollout: RolloutConfig = field(default_factory=_eval_rollout)
    """vLLM sampling and sizing (temperature 0.6, top-p 0.95 by default, the usual avg@k setting)."""
    instruction_suffix: str | None = None
    """Appended to every prompt; None takes `DEFAULT_INSTRUCTIONS[domain]`."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Grading: answer extraction, math timeout, sandbox limits (only the accuracy term is used)."""
    batch_size: int = 64
    """Problems per engine call (one progress-bar step)."""
    cache_dir: str | None = None
    """`datasets` cache directory (default: the library's)."""

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"eval domain must be one of {DOMAINS} (got {self.domain!r})")
        if self.k < 1:
            raise ValueError(f"eval k (samples per problem) must be >= 1 (got {self.k})")
        if self.batch_size < 1:
            raise ValueError(f"eval batch_size must be >= 1 (got {self.batch_size})")

    @property
    def suffix(self) -> str:
        return DEFAULT_INSTRUCTIONS[self.domain] if self.instruction_suffix is None else self.instruction_suffix


def load_eval_rows(spec: str, domain: str, cache_dir: str | None = None) -> list[dict[str, Any]]:
    """Rows in the project schema; any row that cannot be graded is an error (it would bias the score)."""
    problems, rejects = read_problems(spec, domain, cache_dir)
    if rejects:
        listed = "; ".join(f"{r.origin}: {r.reason} ({r.detail})" for r in rejects[:5])
        raise ValueError(f"{spec}: {len(rejects)} rows cannot be evaluated, fix or remove them: {listed}")
    make_ids_unique(problems)
    return [problem.record(graded=False) for problem in problems]


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Sample, grade, and return the aggregate plus per-problem details."""
    from srpo_megatron.rollout.engine import RolloutEngine

    rows = load_eval_rows(config.data, config.domain, config.cache_dir)
    with hf_model_dir(config.model) as model_dir:
        engine = RolloutEngine(model_dir, config.rollout)
        try:
            prompts = [row["prompt"] + config.suffix for row in rows]
            groups = sample_responses(engine, prompts, config.k, config.batch_size, desc=f"eval {config.domain}")
        finally:
            engine.shutdown()
    with RewardScorer(config.reward) as scorer:
        result = score_responses(rows, [[r.response_text for r in group] for group in groups], scorer=scorer)
    for problem, group in zip(result["problems"], groups):
        problem["truncated"] = sum(r.finish_reason == "length" for r in group)
    cfg = config.rollout
    settings = {"model": str(config.model), "data": config.data, "domain": config.domain, "k": config.k,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_response_tokens,
                "seed": cfg.seed, "instruction_suffix": config.suffix}
    return {"settings": settings, **result}


def write_result(result: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
