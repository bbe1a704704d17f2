"""The preprocessing run: read -> decontaminate -> verify -> deduplicate -> grade -> write.

Every dropped row is counted under the first check it fails (`schemas.REASONS` lists them in this
order). Cheap checks come first; deduplication follows verification so that when two copies of a
problem exist, a verified one is kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from srpo_megatron.rollout.sampling import hf_model_dir
from srpo_megatron.preprocess.dedup import DecontaminationConfig, Decontaminator, make_ids_unique, split_duplicates
from srpo_megatron.preprocess.difficulty import DifficultyConfig, grade_difficulty
from srpo_megatron.preprocess.report import (
    HISTOGRAM_FILE,
    REJECTS_FILE,
    REPORT_FILE,
    domain_report,
    plot_difficulty,
    write_json,
    write_rejects,
)
from srpo_megatron.preprocess.schemas import DOMAINS, Problem, Reject, iter_texts, read_problems, write_parquet
from srpo_megatron.preprocess.verify import verify_code, verify_math
from srpo_megatron.rewards.combine import RewardConfig, RewardScorer
from srpo_megatron.rewards.sandbox import Sandbox

OUTPUT_FILES = {"math": "stage1_math.parquet", "code": "stage2_code.parquet"}
"""Stage 1 trains on math only; stage 2 mixes in the code set."""

Pools = dict[str, list[Problem]]


@dataclass
class PreprocessConfig:
    """One preprocessing run."""

    out_dir: str
    """Where the parquet files, report.json, the histogram and the rejects file go (created)."""
    math_files: list[str] = field(default_factory=list)
    """Math datasets: local jsonl/json/parquet/csv files or hub names `NAME[@CONFIG][:SPLIT]`."""
    code_files: list[str] = field(default_factory=list)
    """Code datasets, same forms."""
    eval_files: list[str] = field(default_factory=list)
    """Evaluation sets whose problems must not appear in training data (decontamination)."""
    model: str | None = None
    """HF directory (or Megatron checkpoint) of the base model to grade difficulty with; None skips grading."""
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)
    """K, sampling, buckets, and the too-easy rule."""
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    """n-gram size and overlap threshold."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Grading of reference solutions and sampled responses: math timeout and workers, sandbox limits."""
    max_reference_solutions: int = 1
    """Reference programs tried per code problem; it is kept when one of them passes its tests."""
    keep_rejects: bool = False
    """Also write every dropped row with its reason to `rejects.jsonl`."""
    cache_dir: str | None = None
    """`datasets` cache directory (default: the library's)."""

    def __post_init__(self) -> None:
        if not self.math_files and not self.code_files:
            raise ValueError("preprocess needs at least one dataset: give --math and/or --code files")
        if self.max_reference_solutions < 1:
            raise ValueError(f"max_reference_solutions must be >= 1 (got {self.max_reference_solutions})")


def run_preprocess(config: PreprocessConfig) -> dict[str, Any]:
    """Run every stage, write the outputs, and return the report."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rejects: list[Reject] = []
    pools, read = _read(config, rejects)
    pools = _decontaminate(pools, config, rejects)
    graded: Pools = {}
    with RewardScorer(config.reward) as scorer:
        pools = _verify(pools, config, scorer.sandbox, rejects)
        pools = _deduplicate(pools, rejects)
        if config.model is not None:
            graded = {domain: list(problems) for domain, problems in pools.items()}
            pools = _grade(pools, config, scorer, rejects)
    return _write(out, config, pools, graded, read, rejects)


def _read(config: PreprocessConfig, rejects: list[Reject]) -> tuple[Pools, dict[str, int]]:
    pools: Pools = {domain: [] for domain in DOMAINS}
    read = {domain: 0 for domain in DOMAINS}
    for domain, specs in (("math", config.math_files), ("code", config.code_files)):
        for spec in specs:
            problems, bad = read_problems(spec, domain, config.cache_dir)
            pools[domain] += problems
            rejects += bad
            read[domain] += len(problems) + len(bad)
    return pools, read


def _decontaminate(pools: Pools, config: PreprocessConfig, rejects: list[Reject]) -> Pools:
    if not config.eval_files:
        return pools
    texts = [text for spec in config.eval_files for text in iter_texts(spec, config.cache_dir)]
    checker = Decontaminator(texts, config.decontamination)
    clean: Pools = {}
    for domain, problems in pools.items():
        clean[domain] = []
        for problem in problems:
            if checker.is_contaminated(problem.prompt):
                detail = (f"{checker.overlap(problem.prompt):.0%} of its {config.decontamination.ngram}-grams "
                          "occur in the evaluation sets")
                rejects.append(problem.reject("contaminated", detail))
            else:
                clean[domain].append(problem)
    return clean


def _verify(pools: Pools, config: PreprocessConfig, sandbox: Sandbox, rejects: list[Reject]) -> Pools:
    math, bad_math = verify_math(pools["math"], config.reward)
    code, bad_code = verify_code(pools["code"], config.reward, sandbox, config.max_reference_solutions)
    rejects += bad_math + bad_code
    return {"math": math, "code": code}


def _deduplicate(pools: Pools, rejects: list[Reject]) -> Pools:
    unique: Pools = {}
    for domain, problems in pools.items():
        unique[domain], duplicates = split_duplicates(problems)
        rejects += [dup.reject("duplicate", f"same text as {first.id} ({first.origin})") for dup, first in duplicates]
        make_ids_unique(unique[domain])
    return unique


def _grade(pools: Pools, config: PreprocessConfig, scorer: RewardScorer, rejects: list[Reject]) -> Pools:
    from srpo_megatron.rollout.engine import RolloutEngine  # vLLM: only when grading

    everything = [p for domain in DOMAINS for p in pools[domain]]
    if not everything:
        return pools
    with hf_model_dir(config.model) as model_dir:
        engine = RolloutEngine(model_dir, config.difficulty.rollout)
        try:
            kept, too_easy = grade_difficulty(everything, engine, scorer, config.difficulty)
        finally:
            engine.shutdown()
    rejects += too_easy
    kept_ids = {id(p) for p in kept}
    return {domain: [p for p in pools[domain] if id(p) in kept_ids] for domain in DOMAINS}


def _write(
    out: Path, config: PreprocessConfig, pools: Pools, graded: Pools, read: dict[str, int], rejects: list[Reject]
) -> dict[str, Any]:
    is_graded = config.model is not None
    report: dict[str, Any] = {}
    for domain in DOMAINS:
        write_parquet(out / OUTPUT_FILES[domain], pools[domain], domain, is_graded)
        report[domain] = domain_report(domain, read[domain], pools[domain], rejects, OUTPUT_FILES[domain], is_graded)
    report["inputs"] = {"math": config.math_files, "code": config.code_files, "eval_sets": config.eval_files}
    report["settings"] = _settings(config)
    report["histogram"] = report["rejects"] = None
    if is_graded:
        kept_ids = {id(p) for problems in pools.values() for p in problems}
        too_easy = {id(p) for problems in graded.values() for p in problems if id(p) not in kept_ids}
        plot_difficulty(out / HISTOGRAM_FILE, graded, config.difficulty.samples, too_easy)
        report["histogram"] = HISTOGRAM_FILE
    if config.keep_rejects:
        write_rejects(out / REJECTS_FILE, rejects)
        report["rejects"] = REJECTS_FILE
    write_json(out / REPORT_FILE, report)
    return report


def _settings(config: PreprocessConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "decontamination": asdict(config.decontamination),
        "max_reference_solutions": config.max_reference_solutions,
        "difficulty": None,
    }
    if config.model is not None:
        d, rollout = config.difficulty, config.difficulty.rollout
        settings["difficulty"] = {
            "model": str(config.model), "samples": d.samples, "temperature": rollout.temperature,
            "top_p": rollout.top_p, "max_tokens": rollout.max_response_tokens, "seed": rollout.seed,
            "hard_max": d.hard_max, "medium_max": d.medium_max, "too_easy_at": d.too_easy_at,
        }
    return settings
