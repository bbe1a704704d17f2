"""Read math and code datasets and map their public schemas onto the project's row schema.

Row schema (DESIGN.md section 2): `id`, `domain`, `prompt`, `answer` (math) or `tests` (code, a JSON
string in one of the three forms `rewards.code.parse_tests` reads), `source`.

Recognised columns (case-insensitive; dotted names reach into nested dicts), first match wins:
- prompt: `prompt` (text, or chat messages as in DAPO-Math-17k), `problem`, `question`, `question_content`,
  `text` (MBPP); a code row's `starter_code` is appended to its prompt;
- math: `answer`, `final_answer` (also a one-item list), `reward_model.ground_truth` (a GSM8K answer
  keeps what follows its `#### `); without one, the last `\\boxed{}` of `solution` (MATH, DeepScaleR);
  optional `solution` (reference solution, checked against the answer);
- code, first form found:
  - `tests`, `input_output`, `test_cases`, `public_test_cases` (dict or JSON string; APPS/TACO
    `{"inputs", "outputs"}`, a LiveCodeBench-style list of `{"input", "output"}`, or this project's
    `{"test_code", ...}`; LiveCodeBench's encoded `private_test_cases` are not read); `fn_name` (column,
    inside the tests, or `metadata.func_name`) for function-call tests;
  - a test program in `test_code` or `test` (HumanEval's `check(candidate)` with `entry_point`, KodCode's
    pytest functions, plain asserts), with optional `entry_point` and `test_setup_code`/`setup_code`;
  - MBPP: `test_list` (+ `challenge_test_list`) of assert lines, one test each, after
    `test_setup_code` or `test_imports`; the `test_list` asserts are shown in the prompt as in MBPP's
    own prompts (they name the function), the challenge tests stay hidden;
  optional reference programs in `solutions` (JSON list or list of programs), `solution`,
  `canonical_solution` or `code`. A prompt that is Python code (HumanEval's signature and docstring) is
  framed as "complete this function", and its `canonical_solution` (the body) is appended to it;
- `id`, `unique_id`, `problem_id`, `question_id`, `task_id`, `extra_info.index`; `source`, `data_source`;
- `domain`, when it is a string, must be the domain the file is read as.

A row that cannot be mapped becomes a `Reject` with its reason and never stops the run. A file that
cannot be read at all, is empty, or has no column a prompt or its answer/tests could come from does:
the error names the file (and the line, for JSON that does not parse).
"""

from __future__ import annotations

import ast
import bz2
import gzip
import hashlib
import json
import lzma
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from tqdm import tqdm

from srpo_megatron.preprocess.dedup import normalise_text
from srpo_megatron.rewards.code import parse_tests
from srpo_megatron.rewards.math import AnswerExtraction, extract_answer

DOMAINS = ("math", "code")
MATH_REASONS = (
    "malformed", "missing_answer", "contaminated", "unparseable_answer", "solution_mismatch", "duplicate", "too_easy"
)
CODE_REASONS = ("malformed", "missing_tests", "contaminated", "failing_reference_solution", "duplicate", "too_easy")
REASONS = {"math": MATH_REASONS, "code": CODE_REASONS}
"""Why a row can be dropped, per domain, in the order the pipeline checks them (a row is counted
under the first check it fails). Duplicates are found after verification, so that a verified copy
wins over a broken one."""

PROMPT_KEYS = ("prompt", "problem", "question", "question_content", "text")
ANSWER_KEYS = ("answer", "final_answer", "reward_model.ground_truth")
MATH_SOLUTION_KEYS = ("solution",)
TESTS_KEYS = ("tests", "input_output", "test_cases", "public_test_cases")
TEST_PROGRAM_KEYS = ("test_code", "test")
ASSERT_LIST_KEYS = ("test_list",)
CHALLENGE_KEYS = ("challenge_test_list",)
SETUP_KEYS = ("test_setup_code", "setup_code", "test_imports")
ENTRY_POINT_KEYS = ("entry_point",)
FN_NAME_KEYS = ("fn_name", "metadata.func_name")
CODE_SOLUTION_KEYS = ("solutions", "solution", "canonical_solution", "code")
EXPECTED_COLUMNS = {
    "prompt": PROMPT_KEYS,
    "math": ANSWER_KEYS + MATH_SOLUTION_KEYS,
    "code": TESTS_KEYS + TEST_PROGRAM_KEYS + ASSERT_LIST_KEYS,
}
"""Per role, the columns a file needs at least one of (dotted keys: their top-level column)."""
ID_KEYS = ("id", "unique_id", "problem_id", "question_id", "task_id", "extra_info.index")
SOURCE_KEYS = ("source", "data_source")
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # HumanEval ships HumanEval.jsonl.gz
_HASH_CHARS = 16
_BOXED_ONLY = AnswerExtraction(answer_line=False)  # a MATH solution's final answer is its last \\boxed{}
_GSM8K_MARK = "####"  # GSM8K: "<worked solution>\n#### 72"
_COMPLETE_CODE = "Complete the following Python code; give the whole program, imports included."
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


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
    path = Path(spec)
    if _file_format(path) in _BUILDERS:
        compressed = path.suffix.lower() in _COMPRESSED
        return path.name.rsplit(".", 2 if compressed else 1)[0]
    return spec.partition(":")[0].partition("@")[0].rstrip("/").rsplit("/", 1)[-1]


def load_table(spec: str, cache_dir: str | None = None):
    """A `datasets.Dataset` from a local jsonl/json/parquet/csv file or a hub name `NAME[@CONFIG][:SPLIT]`.

    Raises naming the input when it cannot be read, is empty, or (JSON) where it stops parsing.
    """
    import datasets

    path = Path(spec)
    suffix = _file_format(path)
    if path.is_file() and suffix not in _BUILDERS:
        raise ValueError(f"dataset file {spec}: unsupported extension {suffix!r}; use one of {sorted(_BUILDERS)}, "
                         f"optionally compressed ({', '.join(_COMPRESSED)})")
    if suffix in _BUILDERS:
        if not path.is_file():
            raise FileNotFoundError(f"dataset file {spec} does not exist")
        _check_has_rows(path)
    try:
        if suffix in _BUILDERS:
            table = datasets.load_dataset(_BUILDERS[suffix], data_files=str(path), split="train", cache_dir=cache_dir)
        else:
            name, _, split = spec.partition(":")
            name, _, subset = name.partition("@")
            table = datasets.load_dataset(name, subset or None, split=split or "train", cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - whatever datasets raises, say which input it was
        where = _json_error(path) if suffix in (".jsonl", ".json") and path.is_file() else None
        if where is not None:
            raise ValueError(f"dataset file {spec}: {where}") from err
        raise ValueError(
            f"could not read dataset {spec!r} ({type(err).__name__}: {err}); local files need one of the "
            f"extensions {sorted(_BUILDERS)}, hub datasets are given as NAME[@CONFIG][:SPLIT]"
        ) from err
    if len(table) == 0:
        raise ValueError(f"dataset {spec} has no rows")
    return table


def _file_format(path: Path) -> str:
    """The format suffix of a file name, behind a compression suffix if there is one (`.jsonl.gz`)."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _open(path: Path):
    """The file's bytes, decompressed."""
    return _COMPRESSED.get(path.suffix.lower(), open)(path, "rb")


def _check_has_rows(path: Path) -> None:
    """Empty files make `datasets` fail without naming them (a bare StopIteration for JSON)."""
    if _file_format(path) == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_metadata(path).num_rows
        except Exception:  # noqa: BLE001 - not parquet at all: `datasets` reports it, with the file
            return
    else:
        with _open(path) as f:
            rows = int(bool(f.read(1 << 16).strip()))  # whitespace-only counts as empty
    if not rows:
        raise ValueError(f"dataset file {path} is empty: it has no rows")


def _json_error(path: Path) -> str | None:
    """Where a JSON Lines (or JSON) file stops parsing, as "line N: ...", or None if it parses."""
    with _open(path) as f:
        text = f.read().decode(errors="replace")
    lines = text.splitlines()
    if _file_format(path) == ".json" and (not lines or _loads_or_none(lines[0]) is None):
        try:  # one JSON document (an array of rows), not JSON Lines
            json.loads(text)
            return None
        except ValueError as err:
            return f"line {err.lineno} is not valid JSON ({err.msg}, column {err.colno})"
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError as err:
            return f"line {number} is not valid JSON ({err.msg}): {line.strip()[:80]!r}"
    return None


def check_columns(columns: list[str], roles: tuple[str, ...], spec: str) -> None:
    """Fail when a file has no column for one of `roles` (keys of `EXPECTED_COLUMNS`): every row would be
    dropped, which is a wrong file or a schema this module does not know, not bad rows."""
    found = {str(c).lower() for c in columns}
    for role in roles:
        expected = tuple(dict.fromkeys(key.split(".")[0] for key in EXPECTED_COLUMNS[role]))
        if not found & set(expected):
            raise ValueError(
                f"dataset {spec}: no {role if role == 'prompt' else role + ' answer/tests'} column; expected one "
                f"of {list(expected)}, found columns {sorted(columns)}; rename the column or map the file first"
            )


def read_problems(spec: str, domain: str, cache_dir: str | None = None) -> tuple[list[Problem], list[Reject]]:
    """Map every row of one dataset; rows that do not map come back as rejects."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid: {DOMAINS}")
    table = load_table(spec, cache_dir)
    check_columns(table.column_names, ("prompt", domain), spec)
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
    _check_domain(row, domain)
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
    prompt, tests, solutions = _code_fields(row, prompt)
    return Problem(problem_id, domain, prompt, source, origin, tests=tests, solutions=solutions)


def _check_domain(row: Mapping[str, Any], domain: str) -> None:
    """A string `domain` must be the file's; other values are a set's own metadata (Big-Math lists subjects)."""
    declared = row.get("domain")
    if isinstance(declared, str) and declared.strip() and declared != domain:
        raise RowError(
            "malformed",
            f"column 'domain' is {declared!r} but the row was read as {domain} data; valid domains: "
            f"{list(DOMAINS)} (pass the file under --{declared if declared in DOMAINS else domain} or fix the row)",
        )


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
    """(answer, reference solutions): the answer column, or the solution's last `\\boxed{}` without one."""
    solution_key, solution = _first(row, MATH_SOLUTION_KEYS)
    if solution is not None and not isinstance(solution, str):
        raise RowError("malformed", f"column {solution_key!r} must be a string, got {type(solution).__name__}")
    solutions = (solution,) if _text_or_none(solution) else ()
    key, answer = _first(row, ANSWER_KEYS)
    if isinstance(answer, list) and len(answer) == 1:  # OlympiadBench: "final_answer": ["$3$"]
        answer = answer[0]
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        boxed = extract_answer(solution, _BOXED_ONLY) if solutions else None
        if not boxed:
            raise RowError("missing_answer", f"no answer: none of the columns {ANSWER_KEYS} holds a value and "
                                             f"no {solution_key!r} column holds a \\boxed{{}} final answer")
        return boxed, ()  # the answer is the solution's own: nothing to check it against
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise RowError("malformed", f"column {key!r} must be a string or number, got {type(answer).__name__}")
    answer = str(answer).strip()
    if _GSM8K_MARK in answer:  # GSM8K: the worked solution, then "#### <final answer>"
        answer = answer.rpartition(_GSM8K_MARK)[2].strip()
        answer = answer.replace(",", "") if _THOUSANDS.fullmatch(answer) else answer
        if not answer:
            raise RowError("missing_answer", f"column {key!r} ends in {_GSM8K_MARK!r} with no answer after it")
    return answer, solutions


def _code_fields(row: Mapping[str, Any], prompt: str) -> tuple[str, str, tuple[str, ...]]:
    """(prompt, tests as JSON, reference programs); tests come from the first form the row has."""
    key, value = _first(row, TESTS_KEYS)
    value = _decode_json(value, key)
    if value is not None and value != [] and value != {}:
        tests = _normalise_tests(value, _first(row, FN_NAME_KEYS)[1], key)
    else:
        key, tests, prompt = _program_tests(row, prompt)
    try:
        parse_tests(tests)  # the reward's own parser: what it rejects, training would too
    except (TypeError, ValueError) as err:
        raise RowError("malformed", f"column {key!r}: {err}") from None
    stub = prompt if _is_python(prompt) else None
    solution_key, solutions = _solutions(row)
    if stub is not None:  # HumanEval: the prompt is the signature and docstring to complete
        prompt = f"{_COMPLETE_CODE}\n\n```python\n{stub.rstrip()}\n```"
        if solution_key == "canonical_solution":  # the function body that completes the prompt
            solutions = tuple(stub + body for body in solutions)
    return prompt, json.dumps(tests, ensure_ascii=False), solutions


def _program_tests(row: Mapping[str, Any], prompt: str) -> tuple[str, dict[str, Any], str]:
    """(column, `{"test_code", "setup_code"?, "entry_point"?}`, prompt) from a test-program or MBPP row."""
    key, code = _first(row, TEST_PROGRAM_KEYS)
    code = [code] if isinstance(code, str) else code
    if code is not None and not (isinstance(code, list) and all(isinstance(test, str) for test in code)):
        raise RowError("malformed", f"column {key!r} must be Python test code or a list of it, "
                                    f"got {type(code).__name__}")
    if code and any(_text_or_none(test) for test in code):
        tests = list(code)
    else:
        key, asserts = _first(row, ASSERT_LIST_KEYS)
        asserts = _decode_json(asserts, key)
        if not asserts:
            raise RowError("missing_tests", f"no tests: none of the columns {EXPECTED_COLUMNS['code']} holds any")
        challenge_key, challenge = _first(row, CHALLENGE_KEYS)
        challenge = _decode_json(challenge, challenge_key) or []
        for name, lines in ((key, asserts), (challenge_key, challenge)):
            if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
                raise RowError("malformed", f"column {name!r} must be a list of assert lines")
        tests = [*asserts, *challenge]
        prompt = f"{prompt}\nYour code should pass these tests:\n" + "\n".join(asserts)  # MBPP's own prompt
    program: dict[str, Any] = {"test_code": tests}
    setup_key, setup = _first(row, SETUP_KEYS)
    setup = "\n".join(setup) if isinstance(setup, list) and all(isinstance(line, str) for line in setup) else setup
    if setup is not None and not isinstance(setup, str):
        raise RowError("malformed", f"column {setup_key!r} must be Python code or a list of import lines")
    if _text_or_none(setup):
        program["setup_code"] = setup
    entry_point = _first(row, ENTRY_POINT_KEYS)[1]
    if entry_point is not None and entry_point != "":
        program["entry_point"] = entry_point
    return key, program, prompt


def _is_python(text: str) -> bool:
    """True for a prompt that is Python code defining a function or class (HumanEval), not prose."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for node in tree.body)


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
    """Any accepted input/output layout -> `{"inputs", "outputs"[, "fn_name"]}`; a test program as given."""
    if isinstance(tests, Mapping) and "test_code" in tests:  # this project's own rows
        return dict(tests)
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


def _solutions(row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(column, reference programs) from the first solution column with a value."""
    key, value = _first(row, CODE_SOLUTION_KEYS)
    if isinstance(value, str):
        decoded = _loads_or_none(value)
        value = decoded if isinstance(decoded, list) else [value]  # APPS stores a JSON list; else one program
    if value is None:
        return key, ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise RowError("malformed", f"column {key!r} must be a program or a list of programs")
    return key, tuple(s for s in value if s.strip())


def iter_texts(spec: str, cache_dir: str | None = None) -> Iterator[str]:
    """Prompt texts of an evaluation set (any schema above), for decontamination; rows without one are skipped."""
    table = load_table(spec, cache_dir)
    check_columns(table.column_names, ("prompt",), spec)  # else nothing would be decontaminated, silently
    for raw in table:
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
