"""Math accuracy reward: extract the final answer and check it against the reference with math-verify.

math-verify cannot be trusted to return: its SIGALRM timeout only works in the main thread, raises a
BaseException, and cannot interrupt big-integer arithmetic (`\\boxed{5^{5^{5^5}}}` hangs forever). So
grading runs in worker processes (`GradingPool`); the parent waits with a deadline, kills a stuck
worker, scores the response 0 with reason "timeout" and starts a fresh worker.
"""

from __future__ import annotations

import logging
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from srpo_megatron.rewards.types import RewardResult

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_PARSE_TARGETS = (LatexExtractionConfig(), ExprExtractionConfig())
_WORKER_START_TIMEOUT_S = 120.0  # a worker imports sympy: seconds on a loaded 2-core box
_MAX_FAILED_STARTS = 8
_GOLD_CACHE_SIZE = 4096  # G rollouts share one reference: parse it once per worker


@dataclass(frozen=True)
class AnswerExtraction:
    """Where the final answer sits in a response; the first enabled rule that finds one wins."""

    boxed: bool = True
    """Use the content of the last `\\boxed{...}` / `\\fbox{...}` (balanced braces)."""
    answer_line: bool = True
    """Otherwise use the last line that matches `answer_line_pattern`."""
    answer_line_pattern: str = r"(?im)^[ \t*#>]*(?:final[ \t]+)?answer[ \t*]*[:\uff1a](.*)$"
    """Regex whose group 1 is the answer text. It runs inside the grading worker, so even a
    pathological custom pattern is bounded by the timeout."""


def extract_answer(response: str, extraction: AnswerExtraction = AnswerExtraction()) -> str | None:
    """The final-answer text of `response`, or None when no rule finds one."""
    if extraction.boxed:
        boxed = _last_boxed(response)
        if boxed is not None:
            return boxed
    if extraction.answer_line:
        last = None
        for match in re.finditer(extraction.answer_line_pattern, response):
            last = match
        if last is not None:
            text = _strip_math_delimiters(last.group(1))
            if text:
                return text
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last box command; None if there is none or its braces never close."""
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0 or text[start:brace].strip() not in _BOX_COMMANDS:
        return None
    depth, i = 0, brace
    while i < len(text):
        char = text[i]
        if char == "\\":  # \{ and \} are set braces, not grouping: skip the escaped character
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i].strip()
        i += 1
    return None


def _strip_math_delimiters(text: str) -> str:
    text = text.strip().strip("*").strip().rstrip(".").strip()  # "**Answer:** 12." -> "12"
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            return text[len(left) : len(text) - len(right)].strip()
    return text


def _parse(text: str) -> list:
    # Wrapping in \boxed makes math-verify parse exactly this text, not the first number it sees.
    return parse("\\boxed{" + text + "}", extraction_config=_PARSE_TARGETS, parsing_timeout=None)


def grade_in_process(
    response: str, answer: str, extraction: AnswerExtraction, gold_cache: dict
) -> tuple[float, str]:
    """Score one response in the current process. May hang: call it through `GradingPool`."""
    predicted = extract_answer(response, extraction)
    if predicted is None:
        return 0.0, "no final answer found"
    gold = gold_cache.get(answer)
    if gold is None:
        if len(gold_cache) >= _GOLD_CACHE_SIZE:
            gold_cache.clear()
        gold = gold_cache[answer] = _parse(answer)
    if not gold:
        return 0.0, "reference answer could not be parsed"
    target = _parse(predicted)
    if not target:
        return 0.0, "final answer could not be parsed"
    if verify(gold, target, timeout_seconds=None):
        return 1.0, "correct"
    return 0.0, "wrong answer"


def _worker_main(fd: int, memory_mb: int) -> None:
    """Grading worker: answers (index, response, answer, extraction, timeout) requests until EOF."""
    conn = Connection(fd)
    try:
        if memory_mb > 0:  # huge symbolic results fail with MemoryError instead of swapping
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        # Timeouts are ours (the parent's deadline); silence math-verify's "timeout disabled" warning.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        gold_cache: dict = {}
        grade_in_process("\\boxed{1}", "1", AnswerExtraction(), gold_cache)  # warm caches off the clock
        conn.send(("ready",))
    except BaseException as exc:  # noqa: BLE001 - report any start-up failure to the parent
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            index, response, answer, extraction, timeout_s = conn.recv()
        except (EOFError, OSError):
            return
        _limit_cpu(timeout_s)
        try:
            score, reason = grade_in_process(response, answer, extraction, gold_cache)
        except Exception as exc:  # noqa: BLE001 - any input must yield a score, never a crash
            score, reason = 0.0, f"grader error: {type(exc).__name__}"
        conn.send(("result", index, score, reason))


def _limit_cpu(timeout_s: float) -> None:
    """Backstop for the parent's deadline: a stuck worker dies of SIGXCPU even if the parent is gone."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + timeout_s) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


# `-P`: the working directory is not put on sys.path, so a local `math.py` cannot shadow the stdlib.
_WORKER_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from srpo_megatron.rewards.math import _worker_main; _worker_main(int(sys.argv[2]), int(sys.argv[3]))"
)
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class _Worker:
    """One grading process, its socket, and the task it is working on."""

    def __init__(self, memory_mb: int | None) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-P",
                    "-c",
                    _WORKER_BOOT,
                    _PACKAGE_PARENT,
                    str(theirs.fileno()),
                    str(memory_mb or 0),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the trainer must not kill a grade mid-way
            )
        self.conn = Connection(ours.detach())
        self.started = time.monotonic()
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.conn.close()


class GradingPool:
    """Math grading workers that the parent can kill and replace; safe to share between threads.

    Workers are fresh interpreters (`python -c`), started once and reused across calls; a worker is
    replaced only when it times out or dies, at the cost of one math-verify import (about 0.5 s of
    CPU, small next to the timeout that caused it). Not multiprocessing: its fork server or spawn
    would re-import the caller's `__main__` (the trainer, with torch and vLLM) in every worker.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, memory_mb: int | None = 4096) -> None:
        if workers < 1:
            raise ValueError(f"GradingPool workers must be >= 1 (got {workers}); use 1 for serial grading")
        if not timeout_s > 0:
            raise ValueError(f"GradingPool timeout_s must be > 0 seconds (got {timeout_s})")
        self.timeout_s = timeout_s
        self._memory_mb = memory_mb
        self._lock = threading.Lock()
        self._workers = [_Worker(memory_mb) for _ in range(workers)]
        self._failed_starts = 0  # consecutive deaths before "ready": a broken host, not bad luck
        self._closed = False

    def grade(
        self,
        responses: Sequence[str],
        answers: Sequence[str],
        extraction: AnswerExtraction = AnswerExtraction(),
        timeout_s: float | None = None,
    ) -> list[RewardResult]:
        """Score responses[i] against answers[i] in parallel; results in input order."""
        if len(responses) != len(answers):
            raise ValueError(
                f"got {len(responses)} responses but {len(answers)} answers; pass one answer per response"
            )
        timeout = self.timeout_s if timeout_s is None else timeout_s
        results: list[RewardResult | None] = [None] * len(responses)
        pending = deque(range(len(responses)))
        with self._lock:
            if self._closed:
                raise RuntimeError("GradingPool is closed; create a new one")
            try:
                while pending or any(w.task is not None for w in self._workers):
                    self._dispatch(pending, responses, answers, extraction, timeout)
                    self._collect(results)
                    self._expire(results)
            except BaseException:
                # An interrupted call must not leave results in flight for the next call to read.
                for w in self._workers:
                    if w.task is not None:
                        self._replace(w)
                raise
        return results  # type: ignore[return-value]  # every slot is filled when the loop ends

    def wait_ready(self) -> None:
        """Block until every worker has started, e.g. before the first RL step or before timing."""
        with self._lock:
            if self._closed:
                raise RuntimeError("GradingPool is closed; create a new one")
            while not all(w.ready for w in self._workers):
                self._collect([])
                self._expire([])

    def _dispatch(self, pending, responses, answers, extraction, timeout: float) -> None:
        for w in self._workers:
            if not pending:
                return
            if w.ready and w.task is None:
                index = pending.popleft()
                try:
                    w.conn.send((index, responses[index], answers[index], extraction, timeout))
                except OSError:  # the worker died between tasks: retry the task on a fresh one
                    pending.appendleft(index)
                    self._replace(w)
                    continue
                w.task, w.deadline = index, time.monotonic() + timeout

    def _collect(self, results: list) -> None:
        now = time.monotonic()
        deadlines = [w.deadline for w in self._workers if w.task is not None]
        deadlines += [w.started + _WORKER_START_TIMEOUT_S for w in self._workers if not w.ready]
        wait_s = max(0.0, min(deadlines) - now) if deadlines else 0.0
        for conn in wait([w.conn for w in self._workers], timeout=wait_s):
            w = next(w for w in self._workers if w.conn is conn)
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("died",)
            if message[0] == "result":
                _, index, score, reason = message
                results[index] = RewardResult(score, reason)
                w.task = None
            elif message[0] == "ready":
                w.ready = True
                self._failed_starts = 0
            elif message[0] == "failed":
                raise RuntimeError(f"math grading worker failed to start: {message[1]}")
            else:  # died: killed from outside (OOM killer) or crashed in C code
                if w.task is not None:
                    results[w.task] = RewardResult(0.0, "grader crashed")
                if not w.ready:
                    self._failed_starts += 1
                    if self._failed_starts > _MAX_FAILED_STARTS:
                        raise RuntimeError(f"{self._failed_starts} math grading workers died while starting")
                self._replace(w)

    def _expire(self, results: list) -> None:
        now = time.monotonic()
        for w in self._workers:
            if w.task is not None and now >= w.deadline:
                results[w.task] = RewardResult(0.0, "timeout")
                self._replace(w)
            elif not w.ready and now >= w.started + _WORKER_START_TIMEOUT_S:
                raise RuntimeError(
                    f"math grading worker did not start within {_WORKER_START_TIMEOUT_S:.0f} s"
                )

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self._memory_mb)

    def close(self) -> None:
        """Kill the workers; idempotent."""
        with self._lock:
            if not self._closed:
                for w in self._workers:
                    w.kill()
                self._closed = True

    def __enter__(self) -> GradingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _grade(pool: GradingPool | None, responses: Sequence[str], answers: Sequence[str],
           extraction: AnswerExtraction, timeout_s: float | None) -> list[RewardResult]:
    """Grade with the caller's pool; without one, with a one-worker pool for this call only
    (its worker boots for seconds: callers grading more than once own a pool and pass it)."""
    if pool is not None:
        return pool.grade(responses, answers, extraction, timeout_s)
    with GradingPool(workers=1) as own:
        return own.grade(responses, answers, extraction, timeout_s)


def math_reward(
    response: str,
    answer: str,
    *,
    extraction: AnswerExtraction = AnswerExtraction(),
    timeout_s: float | None = None,
    pool: GradingPool | None = None,
) -> RewardResult:
    """1.0 when the final answer of `response` equals `answer` (math-verify), else 0.0.

    Never raises on any input text and returns within `timeout_s` (default: the pool's) plus dispatch.
    """
    return _grade(pool, [response], [answer], extraction, timeout_s)[0]


def math_reward_batch(
    responses: Sequence[str],
    answers: Sequence[str],
    *,
    extraction: AnswerExtraction = AnswerExtraction(),
    timeout_s: float | None = None,
    pool: GradingPool | None = None,
) -> list[RewardResult]:
    """`math_reward` over a batch, graded in parallel by the pool's workers; input order kept."""
    return _grade(pool, responses, answers, extraction, timeout_s)
