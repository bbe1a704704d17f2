"""Score given responses against their problems: the per-problem pass rate and the aggregates.

Kept apart from generation so that evaluation (and difficulty grading) can be checked with planted
responses. Correctness is the training reward's accuracy term (`RewardScorer`): math-verify for
math, the sandboxed tests for code, so evaluation and training grade identically.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from srpo_megatron.rewards.combine import RewardConfig, RewardScorer


def score_responses(
    rows: Sequence[Mapping[str, Any]],
    responses_per_row: Sequence[Sequence[str]],
    *,
    scorer: RewardScorer | None = None,
) -> dict[str, Any]:
    """Grade responses_per_row[i] (the samples of rows[i]); rows follow the project schema.

    Returns `pass@1` (avg@k: the mean over problems of the fraction of a problem's samples that are
    correct, the AIME / LiveCodeBench pass@1 estimate), `pass@k` (fraction of problems with at least
    one correct sample), `n_problems`, `n_samples`, and `problems`: per problem its id, samples,
    correct count, pass_rate, and per-sample scores, reasons and responses.
    """
    if len(rows) != len(responses_per_row):
        raise ValueError(f"score_responses: got {len(rows)} rows but {len(responses_per_row)} response lists")
    empty = [row.get("id", i) for i, row in enumerate(rows) if not responses_per_row[i]]
    if empty:
        raise ValueError(f"score_responses: rows {empty[:5]} have no responses; give every row at least one")
    flat_rows = [row for row, responses in zip(rows, responses_per_row) for _ in responses]
    flat_responses = [response for responses in responses_per_row for response in responses]
    own_scorer = scorer is None
    scorer = scorer or RewardScorer(RewardConfig())
    try:
        scored = scorer.score(flat_rows, flat_responses)
    finally:
        if own_scorer:
            scorer.close()
    problems = []
    start = 0
    for index, (row, responses) in enumerate(zip(rows, responses_per_row)):
        results = scored[start : start + len(responses)]
        start += len(responses)
        scores = [result.accuracy for result in results]
        problems.append({
            "id": row.get("id", str(index)),
            "domain": row.get("domain"),
            "samples": len(scores),
            "correct": sum(score == 1.0 for score in scores),
            "pass_rate": sum(scores) / len(scores),
            "scores": scores,
            "reasons": [result.reason for result in results],
            "responses": list(responses),
        })
    n = len(problems)
    return {
        "pass@1": sum(p["pass_rate"] for p in problems) / n if n else 0.0,
        "pass@k": sum(p["correct"] > 0 for p in problems) / n if n else 0.0,
        "n_problems": n,
        "n_samples": len(flat_responses),
        "problems": problems,
    }
