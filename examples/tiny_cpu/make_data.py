"""Synthetic math and code problems for the tiny CPU demo, written offline and deterministically.

    python examples/tiny_cpu/make_data.py --out .cache/tiny-data [--seed 0]

Writes `train_math.jsonl`, `train_code.jsonl`, `eval_math.jsonl`, `eval_code.jsonl` in the project's
row schema (`id`, `domain`, `prompt`, `answer` | `tests`, `source`), plus `sft.jsonl`: solved problems
(`prompt`, `response` in the format the rewards grade) for `tools/sft_warmup.py`. No prompt appears in
two files: the warm-up never sees an RL or eval prompt.

Math is chains of single-digit additions and subtractions (`What is 7 + 5 - 3 + 8?`) solved with a
running total in the scratchpad (`7 + 5 = 12, 12 - 3 = 9, 9 + 8 = 17`). The skill is procedural:
every step is one of a few hundred small facts shared by all problems, so what RL sharpens on the
training chains carries over to unseen held-out chains. Code is one-line functions from a family of
templates, graded by function-call tests; what carries over there is the template, with the
function name, argument names and constants copied from the prompt.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from dataclasses import dataclass
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
    """A worked response in the graded format: `<think>...</think>` then `\\boxed{}` or a code block."""
    bare_response: str
    """The same answer without the work: `\\boxed{}` or the code block alone."""


WORKED_SHARE = 0.7
"""Share of warm-up demonstrations that show their work; the rest give the bare answer, as terse
solutions do in real SFT corpora. The warm-up model then sometimes answers without working, which
on a chain of several steps is usually wrong: RL finds that working pays, on every problem,
held-out ones included (and responses get longer, as in SRPO's stage 1)."""


# ---------------------------------------------------------------------------------------------------
# Math: chains of single-digit additions and subtractions, solved with a running total.
# ---------------------------------------------------------------------------------------------------

MAX_TOTAL = 20
"""Running totals stay in [0, 99]: every number the scratchpad writes is one token of the tiny
tokenizer (" 57"), so each step is one lookup `total op digit = new total`."""
CHAIN_STEPS = {2: 0.25, 3: 0.3, 4: 0.25, 5: 0.2}
"""Steps per problem (operands - 1) -> share of problems. Longer chains are harder: one wrong
step spoils the answer, so at temperature 1 accuracy falls with length."""
MATH_PHRASINGS = ("What is {e}?", "Compute {e}.", "Calculate {e}.", "Find the value of {e}.",
                  "Evaluate {e}.", "Work out {e}.")


def draw_chain(rng: random.Random, steps: int) -> tuple[str, list[str], int]:
    """`a op d op d ...` with single-digit `d`; returns (expression, scratchpad steps, answer).

    The skill is procedural: every step `total op d = total'` is one of ~1,600 facts shared by all
    problems, so practice on training chains carries over to unseen chains (unlike whole-problem
    facts such as `37 + 48`, which a tiny model can only memorise one by one)."""
    total = rng.randint(2, 15)
    expression, scratchpad = str(total), []
    for _ in range(steps):
        digit = rng.randint(1, 9)
        ops = [op for op, ok in (("+", total + digit <= MAX_TOTAL), ("-", total - digit >= 0)) if ok]
        op = rng.choice(ops)
        new_total = total + digit if op == "+" else total - digit
        scratchpad.append(f"{total} {op} {digit} = {new_total}")
        expression += f" {op} {digit}"
        total = new_total
    return expression, scratchpad, total


def draw_math(rng: random.Random, steps_weights: dict[int, float] = CHAIN_STEPS) -> Problem:
    """One random chain problem; its length is drawn by `steps_weights`."""
    steps = rng.choices(list(steps_weights), weights=list(steps_weights.values()))[0]
    expression, scratchpad, value = draw_chain(rng, steps)
    prompt = rng.choice(MATH_PHRASINGS).format(e=expression)
    # The space after <think> makes the operands the same tokens as in the prompt (" 37", not "37").
    answer = f"\\boxed{{{value}}}"
    response = f"<think> {', '.join(scratchpad)}</think> {answer}"
    return Problem({"domain": "math", "prompt": prompt, "answer": str(value)}, response, answer)


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
    block = f"```python\n{program}```"
    response = f"<think>Return {expr}.</think>\n{block}"
    tests = {"fn_name": name, "inputs": inputs, "outputs": outputs}
    return Problem({"domain": "code", "prompt": prompt, "tests": tests}, response, block)


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


SIZES = {"train_math": 192, "train_code": 256, "eval_math": 100, "eval_code": 50, "sft_math": 1600,
         "sft_code": 500}
"""Rows per (split, domain). 192 math prompts at 16 per step make a 12-step epoch, so history
resampling rebuilds the stage-1 pool several times in the demo; 100 held-out math rows keep the
avg@8 noise near +-0.03."""


def build_splits(seed: int = 0, **sizes: int) -> dict:
    """`{(split, domain): [Problem]}` for split in train/eval/sft; `sizes` overrides `SIZES` entries
    (`train_math=64`, ...). Eval is drawn first, so its rows do not change when the train or SFT
    sizes do."""
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        raise ValueError(f"unknown split sizes {unknown}; valid: {sorted(SIZES)}")
    sizes = {**SIZES, **sizes}
    splits: dict = {}
    for offset, (domain, draw) in enumerate((("math", draw_math), ("code", draw_code))):
        rng, seen = random.Random(seed * 1000 + offset), set()
        splits["eval", domain] = _draw_new(rng, draw, sizes[f"eval_{domain}"], seen, distinct=True)
        splits["train", domain] = _draw_new(rng, draw, sizes[f"train_{domain}"], seen, distinct=True)
        splits["sft", domain] = _draw_new(rng, draw, sizes[f"sft_{domain}"], seen, distinct=False)
    return splits


def _rows(problems: list[Problem], split: str, domain: str) -> list[dict]:
    return [{"id": f"{domain}-{split}-{i:05d}", **p.row, "source": SOURCE} for i, p in enumerate(problems)]


def _sft_rows(splits: dict, seed: int) -> list[dict]:
    """Math and code SFT rows, `WORKED_SHARE` of them worked, interleaved deterministically (the
    warm-up shuffles them again)."""
    rng, rows = random.Random(seed), []
    for domain in ("math", "code"):
        for i, p in enumerate(splits["sft", domain]):
            response = p.response if rng.random() < WORKED_SHARE else p.bare_response
            rows.append({"id": f"{domain}-sft-{i:05d}", "domain": domain, "prompt": p.row["prompt"],
                         "response": response, "source": SOURCE})
    rng.shuffle(rows)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_data(out: str | Path, seed: int = 0, **sizes: int) -> dict:
    """Write the four RL/eval files and `sft.jsonl` into `out`; `sizes` are `build_splits`'s arguments.
    Returns `{file name: row count}`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = build_splits(seed, **sizes)
    counts = {}
    for (split, domain), name in SPLIT_FILES.items():
        rows = _rows(splits[split, domain], split, domain)
        _write_jsonl(out / name, rows)
        counts[name] = len(rows)
    sft = _sft_rows(splits, seed)
    _write_jsonl(out / SFT_FILE, sft)
    counts[SFT_FILE] = len(sft)
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    for name, default in SIZES.items():
        split, domain = name.split("_")
        p.add_argument(f"--n-{split}-{domain}", dest=name, type=int, default=default,
                       help=f"{split} rows of {domain}")
    args = vars(p.parse_args())
    out = args.pop("out")
    counts = make_data(out, **args)
    print(json.dumps({"out": str(Path(out).resolve()), "rows": counts}))


if __name__ == "__main__":
    main()
