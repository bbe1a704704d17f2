"""Verify reference data: a math answer parses and agrees with its reference solution; a code
problem's reference solution passes its tests in the sandbox.

math-verify can hang (big-integer arithmetic) and its own timeout only works in a main thread, so
math checks run in worker processes that are killed when they overrun (`run_killable`). The reward's
`GradingPool` cannot be reused for this: it only grades response-vs-answer, and "the answer parses"
needs the parse result itself. Code runs through the reward's sandbox, as in training.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
from typing import TYPE_CHECKING, Any, Callable, Sequence

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
from tqdm import tqdm

from srpo_megatron.preprocess.schemas import Problem, Reject
from srpo_megatron.rewards.code import code_reward_batch, extract_program
from srpo_megatron.rewards.math import AnswerExtraction, extract_answer, grade_in_process

if TYPE_CHECKING:  # combine imports torch: keep it out of the math workers, which import this module
    from srpo_megatron.rewards.combine import RewardConfig
    from srpo_megatron.rewards.sandbox import Sandbox

# The targets the math reward parses the reference answer with: what parses here, grades there.
_PARSE_TARGETS = (LatexExtractionConfig(), ExprExtractionConfig())
_CODE_CHUNK = 8  # programs per progress-bar step
_POOL_START_S = 60.0  # extra wait for the first result of a fresh pool: workers start and warm up


def check_answer(answer: str) -> tuple[bool, str]:
    """True when math-verify turns `answer` into a math object, not only its raw-string fallback."""
    parsed = parse("\\boxed{" + answer + "}", extraction_config=_PARSE_TARGETS, parsing_timeout=None)
    if any(not isinstance(item, str) for item in parsed):
        return True, "parsed"
    return False, f"math-verify cannot parse the answer {answer[:80]!r}"


def check_solution(solution: str, answer: str, extraction: AnswerExtraction) -> tuple[bool, str]:
    """True when the solution's final answer equals `answer`, or the solution states none."""
    final = extract_answer(solution, extraction)
    if final is None:
        return True, "the solution states no final answer"
    score, reason = grade_in_process(solution, answer, extraction, {})
    if score == 1.0:
        return True, reason
    return False, f"reference solution's final answer {final[:80]!r} does not match {answer[:80]!r} ({reason})"


def _init_worker(memory_mb: int | None) -> None:
    if memory_mb is not None:  # a huge symbolic result fails with MemoryError instead of swapping
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # the deadline is ours, not its own
    check_answer("1")  # build math-verify's parsers before any call's clock runs


def _guarded(fn: Callable[..., tuple[bool, str]], *args: Any) -> tuple[bool, str]:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - bad data must reject the row, not end the run
        return False, f"math-verify failed: {type(exc).__name__}: {exc}"


def run_killable(
    fn: Callable[..., tuple[bool, str]],
    calls: Sequence[tuple],
    workers: int,
    timeout_s: float,
    memory_mb: int | None,
    desc: str,
) -> list[tuple[bool, str] | None]:
    """fn(*call) for every call in worker processes; None where a call overran `timeout_s`.

    Each call waited on gets at least `timeout_s` (calls start in order, so an unfinished one has
    been running since the previous one returned; the first one of a pool also gets the workers'
    start-up time). On a timeout the pool is killed and the unfinished calls run on a fresh pool.
    """
    ctx = mp.get_context("forkserver")  # never fork the caller (its threads, vLLM, torch)
    ctx.set_forkserver_preload([__name__])  # a worker then costs a fork, not a math-verify import
    results: list[tuple[bool, str] | None] = [None] * len(calls)
    pending = list(range(len(calls)))
    with tqdm(total=len(calls), desc=desc, unit="row", disable=None) as bar:
        while pending:
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(memory_mb,))
            try:
                handles = [(i, pool.apply_async(_guarded, (fn, *calls[i]))) for i in pending]
                pending = []
                for position, (index, handle) in enumerate(handles):
                    try:
                        results[index] = handle.get(timeout_s + (_POOL_START_S if position == 0 else 0.0))
                    except mp.TimeoutError:
                        for j, h in handles[position + 1 :]:
                            if h.ready():
                                results[j] = h.get()
                            else:
                                pending.append(j)
                        bar.update(len(handles) - position - len(pending))
                        break
                    bar.update()
            finally:
                pool.terminate()
                pool.join()
    return results


def verify_math(problems: Sequence[Problem], config: RewardConfig) -> tuple[list[Problem], list[Reject]]:
    """Keep problems whose answer parses and agrees with the reference solution (when one is given)."""
    timeout = f"math-verify did not finish within {config.math_timeout_s:g} s"
    resources = (config.math_workers, config.math_timeout_s, config.math_memory_mb)
    checks = run_killable(check_answer, [(p.answer,) for p in problems], *resources, desc="verify math answers")
    parsed: list[Problem] = []
    rejects: list[Reject] = []
    for problem, result in zip(problems, checks):
        if result is None or not result[0]:
            rejects.append(problem.reject("unparseable_answer", timeout if result is None else result[1]))
        else:
            parsed.append(problem)
    with_solution = [p for p in parsed if p.solutions]
    calls = [(p.solutions[0], p.answer, config.math_extraction) for p in with_solution]
    checks = run_killable(check_solution, calls, *resources, desc="verify math solutions")
    mismatched: set[int] = set()
    for problem, result in zip(with_solution, checks):
        if result is None or not result[0]:
            rejects.append(problem.reject("solution_mismatch", timeout if result is None else result[1]))
            mismatched.add(id(problem))
    return [p for p in parsed if id(p) not in mismatched], rejects


def verify_code(
    problems: Sequence[Problem], config: RewardConfig, sandbox: Sandbox, max_solutions: int
) -> tuple[list[Problem], list[Reject]]:
    """Keep problems without reference solutions, and those where one of the first `max_solutions` passes."""
    if max_solutions < 1:
        raise ValueError(f"max_reference_solutions must be >= 1 (got {max_solutions})")
    failures: dict[int, str] = {id(p): "" for p in problems if p.solutions}
    for attempt in range(max_solutions):
        batch = [p for p in problems if id(p) in failures and len(p.solutions) > attempt]
        for start in tqdm(range(0, len(batch), _CODE_CHUNK), desc=f"verify code solutions #{attempt + 1}",
                          unit="chunk", disable=None):
            chunk = batch[start : start + _CODE_CHUNK]
            responses = [_as_response(p.solutions[attempt], config) for p in chunk]
            results = code_reward_batch(
                responses, [p.tests for p in chunk], extraction=config.code_extraction,
                sandbox=sandbox, workers=config.code_workers,
            )
            for problem, result in zip(chunk, results):
                if result.score == 1.0:
                    del failures[id(problem)]
                else:
                    failures[id(problem)] = f"solution {attempt + 1}: {result.reason}"
    kept = [p for p in problems if id(p) not in failures]
    return kept, [p.reject("failing_reference_solution", failures[id(p)]) for p in problems if id(p) in failures]


def _as_response(solution: str, config: RewardConfig) -> str:
    """A reference program as the reward expects a response: inside a fenced Python block."""
    if extract_program(solution, config.code_extraction) is not None:
        return solution
    return f"```python\n{solution}\n```"
