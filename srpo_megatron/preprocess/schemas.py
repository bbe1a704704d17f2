"""Read math and code datasets and map their public schemas onto the project's row schema.

Row schema (DESIGN.md section 2): `id`, `domain`, `prompt`, `answer` (math) or `tests` (code, a JSON
string `{"inputs": [...], "outputs": [...], "fn_name"?: str}`), `source`.

Recognised columns (case-insensitive; dotted names reach into nested dicts), first match wins:
- prompt: `prompt` (text, or chat messages as in DAPO-Math-17k), `problem`, `question`, `question_content`;
  a code row's `starter_code` is appended to its prompt;
- math: `answer`, `final_answer`, `reward_model.ground_truth`; optional `solution` (reference solution);
- code: `tests`, `input_output`, `test_cases`, `public_test_cases` (dict or JSON string; APPS/TACO
  `{"inputs", "outputs"}` or a LiveCodeBench-style list of `{"input", "output"}`; LiveCodeBench's
  encoded `private_test_cases` are not read); `fn_name` (column, inside the tests, or
  `metadata.func_name`) for function-call tests; optional `solutions` (JSON list or list of programs)
  or `solution`;
- `id`, `unique_id`, `problem_id`, `question_id`, `task_id`, `extra_info.index`; `source`, `data_source`.

A row that cannot be mapped becomes a `Reject` with its reason and never stops the run. A file that
`datasets` cannot read at all does: the error names the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from tqdm import tqdm

from srpo_megatron.preprocess.dedup import normalise_text
from srpo_megatron.rewards.code import TestSuite

DOMAINS = ("math", "code")
MATH_REASONS = (
    "malformed", "missing_answer", "contaminated", "unparseable_answer", "solution_mismatch", "duplicate", "too_easy"
)
CODE_REASONS = ("malformed", "missing_tests", "contaminated", "failing_reference_solution", "duplicate", "too_easy")
REASONS = {"math": MATH_REASONS, "code": CODE_REASONS}
"""Why a row can be dropped, per domain, in the order the pipeline checks them (a row is counted
under the first check it fails). Duplicates are found after verification, so that a verified copy
wins over a broken one."""

PROMPT_KEYS = ("prompt", "problem", "question", "question_content")
ANSWER_KEYS = ("answer", "final_answer", "reward_model.ground_truth")
MATH_SOLUTION_KEYS = ("solution",)
TESTS_KEYS = ("tests", "input_output", "test_cases", "public_test_cases")
FN_NAME_KEYS = ("fn_name", "metadata.func_name")
CODE_SOLUTION_KEYS = ("solutions", "solution")
ID_KEYS = ("id", "unique_id", "problem_id", "question_id", "task_id", "extra_info.index")
SOURCE_KEYS = ("source", "data_source")
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_HASH_CHARS = 16


class RowError(ValueError):
    """A row that cannot enter the dataset; `reason` is one of `REASONS[domain]`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Problem:
    """One row in the project's schema, plus what verification needs (never written out)."""

    id: str
    domain: str
    prompt: str
    source: str
    origin: str
    """`file:row` it came from, for messages and the rejects file."""
    answer: str | None = None
    tests: str | None = None
    solutions: tuple[str, ...] = ()
    """Reference solutions: the math solution text, or candidate programs of a code problem."""
    pass_rate: float | None = None
    difficulty: str | None = None

    def record(self, graded: bool) -> dict[str, Any]:
        """The output row; `pass_rate` and `difficulty` only when the run graded difficulty."""
        row: dict[str, Any] = {"id": self.id, "domain": self.domain, "prompt": self.prompt}
        if self.domain == "math":
            row["answer"] = self.answer
        else:
            row["tests"] = self.tests
        row["source"] = self.source
        if graded:
            row["pass_rate"] = self.pass_rate
            row["difficulty"] = self.difficulty
        return row

    def reject(self, reason: str, detail: str) -> Reject:
        """This problem as a dropped row (the rejects file shows its mapped fields and solutions)."""
        row = {**self.record(graded=self.pass_rate is not None), "solutions": list(self.solutions)}
        return Reject(self.domain, reason, detail, self.origin, self.id, row)


@dataclass
class Reject:
    """A dropped row: why, where it came from, and (for the rejects file) its content."""

    domain: str
    reason: str
    detail: str
    origin: str
    id: str | None = None
    row: dict[str, Any] = field(default_factory=dict)


def dataset_name(spec: str) -> str:
    """Short name of a file or hub dataset, the `source` of rows that name none."""
    if Path(spec).suffix.lower() in _BUILDERS:
        return Path(spec).stem
    return spec.partition(":")[0].partition("@")[0].rstrip("/").rsplit("/", 1)[-1]


def load_table(spec: str, cache_dir: str | None = None):
    """A `datasets.Dataset` from a local jsonl/json/parquet/csv file or a hub name `NAME[@CONFIG][:SPLIT]`."""
    import datasets

    path = Path(spec)
    suffix = path.suffix.lower()
    if path.is_file() and suffix not in _BUILDERS:
        raise ValueError(f"dataset file {spec}: unsupported extension {suffix!r}; use one of {sorted(_BUILDERS)}")
    try:
        if suffix in _BUILDERS:
            if not path.is_file():
                raise FileNotFoundError(f"dataset file {spec} does not exist")
            return datasets.load_dataset(_BUILDERS[suffix], data_files=str(path), split="train", cache_dir=cache_dir)
        name, _, split = spec.partition(":")
        name, _, subset = name.partition("@")
        return datasets.load_dataset(name, subset or None, split=split or "train", cache_dir=cache_dir)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever datasets raises, say which input it was
        raise ValueError(
            f"could not read dataset {spec!r} ({type(err).__name__}: {err}); local files need one of the "
            f"extensions {sorted(_BUILDERS)}, hub datasets are given as NAME[@CONFIG][:SPLIT]"
        ) from err


def read_problems(spec: str, domain: str, cache_dir: str | None = None) -> tuple[list[Problem], list[Reject]]:
    """Map every row of one dataset; rows that do not map come back as rejects."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid: {DOMAINS}")
    table = load_table(spec, cache_dir)
    name = dataset_name(spec)
    problems: list[Problem] = []
    rejects: list[Reject] = []
    for index, raw in enumerate(tqdm(table, desc=f"read {name}", unit="row", disable=None)):
        origin = f"{spec}:{index}"
        try:
            problems.append(map_row(raw, domain, name, origin))
        except RowError as err:
            rejects.append(Reject(domain, err.reason, err.detail, origin, _raw_id(raw), dict(raw)))
        except Exception as err:  # noqa: BLE001 - a row shape no check foresaw: count it, never stop the run
            detail = f"{type(err).__name__}: {err}"
            rejects.append(Reject(domain, "malformed", detail, origin, _raw_id(raw), dict(raw)))
    return problems, rejects


def map_row(raw: Mapping[str, Any], domain: str, dataset: str, origin: str) -> Problem:
    """One public-schema row -> `Problem`; raises `RowError` naming the reason and the column."""
    row = {str(key).lower(): value for key, value in raw.items()}
    prompt = _prompt(row)
    source = _text_or_none(_first(row, SOURCE_KEYS)[1]) or dataset
    raw_id = _raw_id(row)
    problem_id = raw_id if raw_id else hashlib.sha256(normalise_text(prompt).encode()).hexdigest()[:_HASH_CHARS]
    if domain == "math":
        answer, solution = _math_fields(row)
        return Problem(problem_id, domain, prompt, source, origin, answer=answer, solutions=solution)
    starter = _text_or_none(row.get("starter_code"))
    if starter:
        prompt = f"{prompt}\n\nStarter code:\n```python\n{starter}\n```"
    tests, solutions = _code_fields(row)
    return Problem(problem_id, domain, prompt, source, origin, tests=tests, solutions=solutions)


def _first(row: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, Any]:
    """(column, value) of the first key with a non-null value; (keys[0], None) if none has one."""
    for key in keys:
        value: Any = row
        for part in key.split("."):
            if isinstance(value, str):  # nested JSON text, e.g. LiveCodeBench's `metadata`
                value = _loads_or_none(value)
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            return key, value
    return keys[0], None


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _text_or_none(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _raw_id(row: Mapping[str, Any]) -> str | None:
    value = _first({str(k).lower(): v for k, v in row.items()}, ID_KEYS)[1]
    return (str(value).strip() or None) if isinstance(value, (str, int)) else None


def _prompt(row: Mapping[str, Any]) -> str:
    key, value = _first(row, PROMPT_KEYS)
    if isinstance(value, list):  # chat messages: the (last) user turn is the problem
        users = [m.get("content") for m in value if isinstance(m, Mapping) and m.get("role") == "user"]
        value = users[-1] if users else value
    if value is None:
        raise RowError("malformed", f"no prompt: none of the columns {PROMPT_KEYS} holds a value")
    if not isinstance(value, str):
        raise RowError("malformed", f"column {key!r} must be a string, got {type(value).__name__} {str(value)[:80]!r}")
    if not value.strip():
        raise RowError("malformed", f"column {key!r} is empty")
    return value


def _math_fields(row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    key, answer = _first(row, ANSWER_KEYS)
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise RowError("missing_answer", f"no answer: none of the columns {ANSWER_KEYS} holds a value")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise RowError("malformed", f"column {key!r} must be a string or number, got {type(answer).__name__}")
    key, solution = _first(row, MATH_SOLUTION_KEYS)
    if solution is not None and not isinstance(solution, str):
        raise RowError("malformed", f"column {key!r} must be a string, got {type(solution).__name__}")
    return str(answer).strip(), ((solution,) if _text_or_none(solution) else ())


def _code_fields(row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    key, value = _first(row, TESTS_KEYS)
    tests = _normalise_tests(_decode_json(value, key), _first(row, FN_NAME_KEYS)[1], key)
    try:
        TestSuite.from_tests(tests)  # the reward's own parser: what it rejects, training would too
    except (TypeError, ValueError) as err:
        raise RowError("malformed", f"column {key!r}: {err}") from None
    return json.dumps(tests, ensure_ascii=False), _solutions(row)


def _decode_json(value: Any, key: str) -> Any:
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError as err:
        raise RowError("malformed", f"column {key!r} is not valid JSON ({err})") from None


def _normalise_tests(tests: Any, fn_name: Any, key: str) -> dict[str, Any]:
    """Any accepted test layout -> `{"inputs", "outputs"[, "fn_name"]}`; empty -> missing_tests."""
    if tests is None or (isinstance(tests, (list, dict)) and not tests):
        raise RowError("missing_tests", f"no tests: none of the columns {TESTS_KEYS} holds any")
    if isinstance(tests, list):  # LiveCodeBench: [{"input": ..., "output": ..., "testtype": ...}, ...]
        if not all(isinstance(case, Mapping) and {"input", "output"} <= case.keys() for case in tests):
            raise RowError("malformed", f"column {key!r}: a list of tests must hold {{'input', 'output'}} dicts")
        tests = {"inputs": [case["input"] for case in tests], "outputs": [case["output"] for case in tests]}
    if not isinstance(tests, Mapping):
        raise RowError("malformed", f"column {key!r} must be a dict of tests, got {type(tests).__name__}")
    if "inputs" in tests and not tests["inputs"]:
        raise RowError("missing_tests", f"column {key!r} has no test inputs")
    normalised = {"inputs": tests.get("inputs"), "outputs": tests.get("outputs")}
    name = tests.get("fn_name") or fn_name
    if name:
        normalised["fn_name"] = str(name)
    return normalised


def _solutions(row: Mapping[str, Any]) -> tuple[str, ...]:
    key, value = _first(row, CODE_SOLUTION_KEYS)
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        value = decoded if isinstance(decoded, list) else [value]  # APPS stores a JSON list; else one program
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise RowError("malformed", f"column {key!r} must be a program or a list of programs")
    return tuple(s for s in value if s.strip())


def iter_texts(spec: str, cache_dir: str | None = None) -> Iterator[str]:
    """Prompt texts of an evaluation set (any schema above), for decontamination; rows without one are skipped."""
    for raw in load_table(spec, cache_dir):
        try:
            yield _prompt({str(key).lower(): value for key, value in raw.items()})
        except RowError:
            continue


def write_parquet(path: Path, problems: list[Problem], domain: str, graded: bool) -> None:
    """The domain's rows with a fixed column set and types, also when there are none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = [("id", pa.string()), ("domain", pa.string()), ("prompt", pa.string()),
               ("answer" if domain == "math" else "tests", pa.string()), ("source", pa.string())]
    if graded:
        columns += [("pass_rate", pa.float64()), ("difficulty", pa.string())]
    schema = pa.schema(columns)
    pq.write_table(pa.Table.from_pylist([p.record(graded) for p in problems], schema=schema), path)
