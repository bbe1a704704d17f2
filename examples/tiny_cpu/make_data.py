"""Synthetic math and code problems for the tiny CPU demo, written offline and deterministically.

    python examples/tiny_cpu/make_data.py --out .cache/tiny-data [--seed 0]

Writes `train_math.jsonl`, `train_code.jsonl`, `eval_math.jsonl`, `eval_code.jsonl` in the project's
row schema (`id`, `domain`, `prompt`, `answer` | `tests`, `source`), plus `sft.jsonl`: solved problems
(`prompt`, `response` in the format the rewards grade) for `tools/sft_warmup.py`. No prompt appears in
two files: the warm-up never sees an RL or eval prompt.

Math is integer arithmetic with a difficulty range: single-digit sums and products (easy) up to
two-step expressions and two-digit operands (hard for a tiny model). A tiny model cannot derive
`7 + 8` from other sums, it memorises facts, so the warm-up corpus is mostly single-digit facts, which
recur in the other files under other wordings. Code is one-line functions from a family of
templates, graded by function-call tests; what carries over there is the template, with the
function name, argument names and constants copied from the prompt.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

SOURCE = "synthetic"
SPLIT_FILES = {
    ("train", "math"): "train_math.jsonl",
    ("train", "code"): "train_code.jsonl",
    ("eval", "math"): "eval_math.jsonl",
    ("eval", "code"): "eval_code.jsonl",
}
SFT_FILE = "sft.jsonl"
_MAX_DRAWS_PER_ROW = 200  # rejection sampling of unseen problems; a small key space fails loudly


@dataclass(frozen=True)
class Problem:
    """One solved problem: the row the trainer reads and the reference response the warm-up imitates."""

    row: dict
    """`domain`, `prompt` and `answer` or `tests` (ids are assigned per split)."""
    response: str
    """A correct response in the graded format: `<think>...</think>` then `\\boxed{}` or a code block."""


# ---------------------------------------------------------------------------------------------------
# Math: each kind returns (expression, reasoning steps, answer).
# ---------------------------------------------------------------------------------------------------

def _binary(a: int, op: str, b: int) -> tuple[str, int]:
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"{a} {op} {b} = {value}", value


def _one_step(a_range: tuple[int, int], op: str, b_range: tuple[int, int]) -> Callable:
    def draw(rng: random.Random) -> tuple[str, list[str], int]:
        a, b = rng.randint(*a_range), rng.randint(*b_range)
        step, value = _binary(a, op, b)
        return f"{a} {op} {b}", [step], value

    return draw


def _two_step(rng: random.Random) -> tuple[str, list[str], int]:
    """`(a op1 b) op2 c`, parenthesised when precedence would otherwise change the order."""
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
    op1, op2 = rng.choice("+-*"), rng.choice("+-*")
    first, middle = _binary(a, op1, b)
    second, value = _binary(middle, op2, c)
    left = f"({a} {op1} {b})" if op2 == "*" and op1 != "*" else f"{a} {op1} {b}"
    return f"{left} {op2} {c}", [first, second], value


MATH_KINDS: dict[str, tuple[float, Callable]] = {
    "add_small": (0.30, _one_step((0, 9), "+", (0, 9))),
    "mul_small": (0.15, _one_step((2, 9), "*", (2, 9))),
    "add": (0.15, _one_step((10, 99), "+", (0, 99))),
    "sub": (0.15, _one_step((0, 99), "-", (0, 60))),
    "mul": (0.10, _one_step((10, 30), "*", (2, 9))),
    "two_step": (0.15, _two_step),
}
SFT_MATH_WEIGHTS = {"add_small": 0.45, "mul_small": 0.35, "add": 0.05, "sub": 0.05, "mul": 0.05,
                    "two_step": 0.05}
"""The warm-up corpus is mostly single-digit facts: a tiny model memorises those within the time
budget, so it starts RL right on the easy problems and mostly wrong on the hard ones."""
MATH_PHRASINGS = ("What is {e}?", "Compute {e}.", "Calculate {e}.", "Find the value of {e}.",
                  "Evaluate {e}.", "Work out {e}.")


def draw_math(rng: random.Random, weights: dict[str, float] | None = None) -> Problem:
    """One random arithmetic problem; the kind is drawn by `weights` (default: `MATH_KINDS`)."""
    weights = weights or {kind: weight for kind, (weight, _) in MATH_KINDS.items()}
    draw = MATH_KINDS[rng.choices(list(weights), weights=list(weights.values()))[0]][1]
    expression, steps, value = draw(rng)
    prompt = rng.choice(MATH_PHRASINGS).format(e=expression)
    # The space after <think> makes the operands the same tokens as in the prompt (" 37", not "37").
    response = f"<think> {', '.join(steps)}</think> \\boxed{{{value}}}"
    return Problem({"domain": "math", "prompt": prompt, "answer": str(value)}, response)


# ---------------------------------------------------------------------------------------------------
# Code: one-line functions. `expr` is the program text, `reference` an independent implementation
# that computes the expected outputs.
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CodeTemplate:
    names: tuple[str, ...]
    """Function names the prompt may ask for (the tests call this name)."""
    kind: str
    """Argument family: `int1`, `int2`, `int2_pos` (second argument >= 1), `list`, `str`."""
    phrase: str
    """What the function returns, with `{x}` / `{a}` `{b}` for argument names and `{k}` for a constant."""
    expr: str
    """The returned expression as program text, with the same placeholders."""
    reference: Callable
    """Computes the expected outputs; written separately from `expr`, so the tests check the program."""
    uses_k: bool = False


ARG_NAMES = {
    "int1": (("x",), ("n",), ("a",), ("v",), ("num",)),
    "int2": (("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"), ("u", "v")),
    "list": (("xs",), ("nums",), ("values",), ("items",), ("arr",)),
    "str": (("s",), ("text",), ("word",), ("w",), ("name",)),
}
ARG_NAMES["int2_pos"] = ARG_NAMES["int2"]
GENERIC_NAMES = ("f", "g", "solve", "compute", "func", "calc")
"""Names any template may get: the model has to copy the name from the prompt, not guess it."""

CODE_TEMPLATES = (
    CodeTemplate(("double", "twice", "times_two"), "int1", "twice {x}", "2 * {x}", lambda x: 2 * x),
    CodeTemplate(("square", "sq", "squared"), "int1", "the square of {x}", "{x} * {x}", lambda x: x * x),
    CodeTemplate(("cube", "cubed"), "int1", "the cube of {x}", "{x} ** 3", lambda x: x**3),
    CodeTemplate(("negate", "neg", "opposite"), "int1", "the negation of {x}", "-{x}", lambda x: -x),
    CodeTemplate(("absolute", "abs_value", "magnitude"), "int1", "the absolute value of {x}",
                 "abs({x})", abs),
    CodeTemplate(("is_even", "even"), "int1", "True if {x} is even, else False", "{x} % 2 == 0",
                 lambda x: x % 2 == 0),
    CodeTemplate(("is_odd", "odd"), "int1", "True if {x} is odd, else False", "{x} % 2 == 1",
                 lambda x: x % 2 == 1),
    CodeTemplate(("is_positive", "positive"), "int1", "True if {x} is greater than 0",
                 "{x} > 0", lambda x: x > 0),
    CodeTemplate(("add_k", "plus_k", "shift"), "int1", "{x} plus {k}", "{x} + {k}",
                 lambda x, k: x + k, uses_k=True),
    CodeTemplate(("scale", "mul_k", "times_k"), "int1", "{x} times {k}", "{x} * {k}",
                 lambda x, k: x * k, uses_k=True),
    CodeTemplate(("mod_k", "remainder"), "int1", "{x} modulo {k}", "{x} % {k}",
                 lambda x, k: x % k, uses_k=True),
    CodeTemplate(("add", "add_numbers", "plus", "total"), "int2", "the sum of {a} and {b}",
                 "{a} + {b}", lambda a, b: a + b),
    CodeTemplate(("sub", "subtract", "minus", "difference"), "int2", "{a} minus {b}", "{a} - {b}",
                 lambda a, b: a - b),
    CodeTemplate(("mul", "multiply", "product", "times"), "int2", "the product of {a} and {b}",
                 "{a} * {b}", lambda a, b: a * b),
    CodeTemplate(("larger", "maximum", "bigger"), "int2", "the larger of {a} and {b}", "max({a}, {b})",
                 max),
    CodeTemplate(("smaller", "minimum", "lesser"), "int2", "the smaller of {a} and {b}",
                 "min({a}, {b})", min),
    CodeTemplate(("distance", "abs_diff", "gap"), "int2", "the absolute difference of {a} and {b}",
                 "abs({a} - {b})", lambda a, b: abs(a - b)),
    CodeTemplate(("same", "is_equal", "equal"), "int2", "True if {a} equals {b}, else False",
                 "{a} == {b}", lambda a, b: a == b),
    CodeTemplate(("divide", "int_div", "quotient"), "int2_pos",
                 "{a} divided by {b}, rounded down", "{a} // {b}", lambda a, b: a // b),
    CodeTemplate(("sum_list", "list_total", "add_all"), "list", "the sum of the list {x}",
                 "sum({x})", sum),
    CodeTemplate(("max_list", "largest", "list_max"), "list", "the largest element of {x}",
                 "max({x})", max),
    CodeTemplate(("count", "size", "length"), "list", "the number of elements in {x}",
                 "len({x})", len),
    CodeTemplate(("first", "head"), "list", "the first element of {x}", "{x}[0]", lambda xs: xs[0]),
    CodeTemplate(("last", "tail_item"), "list", "the last element of {x}", "{x}[-1]",
                 lambda xs: xs[-1]),
    CodeTemplate(("upper", "shout", "to_upper"), "str", "{x} in upper case", "{x}.upper()",
                 str.upper),
    CodeTemplate(("str_len", "text_length", "n_chars"), "str", "the number of characters in {x}",
                 "len({x})", len),
)


def _draw_input(rng: random.Random, kind: str) -> list:
    """Positional arguments for one test case."""
    if kind == "int1":
        return [rng.randint(-20, 20)]
    if kind == "int2":
        return [rng.randint(-20, 20), rng.randint(-20, 20)]
    if kind == "int2_pos":
        return [rng.randint(-20, 20), rng.randint(1, 9)]
    if kind == "list":
        return [[rng.randint(-9, 9) for _ in range(rng.randint(1, 5))]]
    # Letters only: the code reward JSON-decodes string outputs, so "true"/"null" could not round-trip.
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(1, 6)))]


def draw_code(rng: random.Random) -> Problem:
    """One random function-writing problem with 3-5 function-call tests."""
    template = rng.choice(CODE_TEMPLATES)
    name = rng.choice(template.names + GENERIC_NAMES)
    args = rng.choice(ARG_NAMES[template.kind])
    fields = dict(zip(("a", "b"), args)) if len(args) == 2 else {"x": args[0]}
    k = rng.randint(2, 9) if template.uses_k else None
    phrase = template.phrase.format(k=k, **fields)
    expr = template.expr.format(k=k, **fields)
    inputs = [_draw_input(rng, template.kind) for _ in range(rng.randint(3, 5))]
    extra = {"k": k} if template.uses_k else {}
    outputs = [template.reference(*arg, **extra) for arg in inputs]
    signature = f"{name}({', '.join(args)})"
    prompt = f"Write a Python function `{signature}` that returns {phrase}."
    program = f"def {signature}:\n    return {expr}\n"
    response = f"<think>Return {expr}.</think>\n```python\n{program}```"
    tests = {"fn_name": name, "inputs": inputs, "outputs": outputs}
    return Problem({"domain": "code", "prompt": prompt, "tests": tests}, response)


# ---------------------------------------------------------------------------------------------------
# Splits and files
# ---------------------------------------------------------------------------------------------------

def _draw_new(rng: random.Random, draw: Callable[[random.Random], Problem], n: int, seen: set[str],
              distinct: bool) -> list[Problem]:
    """`n` problems whose prompts are not in `seen`; with `distinct`, not repeated either, and added
    to `seen`. So no prompt is in two splits (the SFT corpus may repeat its own easy prompts)."""
    problems: list[Problem] = []
    for _ in range(n * _MAX_DRAWS_PER_ROW):
        if len(problems) == n:
            break
        problem = draw(rng)
        if problem.row["prompt"] not in seen:
            if distinct:
                seen.add(problem.row["prompt"])
            problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"only {len(problems)} new {problem.row['domain']} problems of {n} requested; "
                         "lower the split sizes")
    return problems


def build_splits(seed: int = 0, n_train: int = 300, n_eval: int = 50, n_sft_math: int = 1200,
                 n_sft_code: int = 400) -> dict:
    """`{(split, domain): [Problem]}` for split in train/eval/sft. Eval is drawn first, so its rows do
    not change when the train or SFT sizes do."""
    splits: dict = {}
    sft = {"math": (n_sft_math, partial(draw_math, weights=SFT_MATH_WEIGHTS)),
           "code": (n_sft_code, draw_code)}
    for offset, (domain, draw) in enumerate((("math", draw_math), ("code", draw_code))):
        rng, seen = random.Random(seed * 1000 + offset), set()
        splits["eval", domain] = _draw_new(rng, draw, n_eval, seen, distinct=True)
        splits["train", domain] = _draw_new(rng, draw, n_train, seen, distinct=True)
        splits["sft", domain] = _draw_new(rng, sft[domain][1], sft[domain][0], seen, distinct=False)
    return splits


def _rows(problems: list[Problem], split: str, domain: str) -> list[dict]:
    return [{"id": f"{domain}-{split}-{i:05d}", **p.row, "source": SOURCE} for i, p in enumerate(problems)]


def _sft_rows(splits: dict) -> list[dict]:
    """Math and code SFT rows interleaved deterministically (the warm-up shuffles them again)."""
    rows = []
    for domain in ("math", "code"):
        for i, p in enumerate(splits["sft", domain]):
            rows.append({"id": f"{domain}-sft-{i:05d}", "domain": domain, "prompt": p.row["prompt"],
                         "response": p.response, "source": SOURCE})
    random.Random(0).shuffle(rows)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_data(out: str | Path, **sizes: int) -> dict:
    """Write the four RL/eval files and `sft.jsonl` into `out`; `sizes` are `build_splits`'s arguments.
    Returns `{file name: row count}`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = build_splits(**sizes)
    counts = {}
    for (split, domain), name in SPLIT_FILES.items():
        rows = _rows(splits[split, domain], split, domain)
        _write_jsonl(out / name, rows)
        counts[name] = len(rows)
    sft = _sft_rows(splits)
    _write_jsonl(out / SFT_FILE, sft)
    counts[SFT_FILE] = len(sft)
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", dest="n_train", type=int, default=300, help="train rows per domain")
    p.add_argument("--n-eval", dest="n_eval", type=int, default=50, help="eval rows per domain")
    p.add_argument("--n-sft-math", dest="n_sft_math", type=int, default=1200, help="math SFT rows")
    p.add_argument("--n-sft-code", dest="n_sft_code", type=int, default=400, help="code SFT rows")
    args = vars(p.parse_args())
    out = args.pop("out")
    counts = make_data(out, **args)
    print(json.dumps({"out": str(Path(out).resolve()), "rows": counts}))


if __name__ == "__main__":
    main()
