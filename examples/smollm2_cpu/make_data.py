"""Arithmetic word problems for the SmolLM2 CPU example, generated offline and deterministically.

    python examples/smollm2_cpu/make_data.py --out runs/smollm2_cpu/data [--seed 0 --n-train 2000 --n-eval 64 --n-sft 1000]

Each template is a short story (shopping, sharing, ages, rates, ...) over small integers with one or
two operations. Writes, in the project's row schema (`id`, `domain`, `prompt`, `answer`, `source`;
source names the template):
- `eval_math.jsonl`, the held-out problems (drawn first, so they do not change with the other sizes);
- `train_math.jsonl`, the RL problems;
- `sft.jsonl`, the warm-up demonstrations (`tools/sft_warmup.py`), on problems of their own, with a
  `response`: `WORKED_SHARE` of them show the calculation (`12 - 3 = 9, 9 + 4 = 13, so the answer is
  \\boxed{13}.`), the rest give the bare answer (`The answer is \\boxed{13}.`).

Why a warm-up at all: the dequantised 135M model solves about 1.5% of these problems at temperature
0.7 (5.5% greedy) and boxes a number in a quarter of its answers, so nearly every group of rollouts
is all-wrong and carries no gradient. Why bare answers in it: a bare answer to a two-step problem is
mostly wrong, so the warmed-up model is partly competent, and showing the work is a procedural skill
that RL can sharpen on the train problems and that carries over to the held-out ones (the same
design as the tiny demo's warm-up). No prompt appears in two files.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SOURCE = "arith"
TRAIN_FILE, EVAL_FILE, SFT_FILE = "train_math.jsonl", "eval_math.jsonl", "sft.jsonl"
WORKED_SHARE = 0.7
"""Share of warm-up demonstrations that show the calculation; the rest give the bare answer."""
NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack", "Kira", "Leo",
         "Maya", "Noah", "Olga", "Priya", "Sam", "Tara", "Umar", "Vera")
ITEMS = ("apple", "pencil", "notebook", "cookie", "marble", "sticker", "orange", "book", "toy car", "cupcake")
VEHICLES = ("train", "car", "truck", "boat")
_MAX_DRAWS_PER_ROW = 50  # rejection sampling for distinct prompts; far above what the sizes need


@dataclass(frozen=True)
class Problem:
    """One drawn problem: its text, its integer answer and the calculation that reaches it."""

    prompt: str
    answer: int
    work: tuple[str, ...]
    """Equations in order, e.g. ("12 - 3 = 9", "9 + 4 = 13")."""

    @property
    def response(self) -> str:
        return f"{', '.join(self.work)}, so the answer is \\boxed{{{self.answer}}}."

    @property
    def bare_response(self) -> str:
        return f"The answer is \\boxed{{{self.answer}}}."


@dataclass(frozen=True)
class Template:
    """One kind of story: `draw` picks its numbers."""

    name: str
    draw: Callable[[random.Random], Problem]


def _more(rng: random.Random) -> Problem:
    name, item, have, more = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 12), rng.randint(1, 9)
    return Problem(f"{name} has {have} {item}s and gets {more} more. How many {item}s does {name} have now?",
                   have + more, (f"{have} + {more} = {have + more}",))


def _give_away(rng: random.Random) -> Problem:
    name, item, have = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(4, 15)
    given = rng.randint(1, have - 1)
    return Problem(f"{name} has {have} {item}s and gives {given} of them to a friend. "
                   f"How many {item}s does {name} have left?", have - given, (f"{have} - {given} = {have - given}",))


def _shopping(rng: random.Random) -> Problem:
    name, item, count, price = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 5), rng.randint(2, 6)
    return Problem(f"{name} buys {count} {item}s. Each {item} costs {price} dollars. "
                   f"How many dollars does {name} spend?", count * price, (f"{count} * {price} = {count * price}",))


def _change(rng: random.Random) -> Problem:
    name, item, count, price = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 4), rng.randint(2, 5)
    cost = count * price
    money = cost + rng.randint(1, 10)
    return Problem(f"{name} has {money} dollars and buys {count} {item}s that cost {price} dollars each. "
                   f"How many dollars does {name} have left?", money - cost,
                   (f"{count} * {price} = {cost}", f"{money} - {cost} = {money - cost}"))


def _sharing(rng: random.Random) -> Problem:
    name, item, friends, each = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 5), rng.randint(2, 6)
    return Problem(f"{name} has {friends * each} {item}s and shares them equally among {friends} friends. "
                   f"How many {item}s does each friend get?", each, (f"{friends * each} / {friends} = {each}",))


def _keep_and_share(rng: random.Random) -> Problem:
    name, item, friends, each = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 4), rng.randint(2, 5)
    kept, rest = rng.randint(1, 6), friends * each
    return Problem(f"{name} has {rest + kept} {item}s, keeps {kept} of them and shares the rest "
                   f"equally among {friends} friends. How many {item}s does each friend get?", each,
                   (f"{rest + kept} - {kept} = {rest}", f"{rest} / {friends} = {each}"))


def _ages(rng: random.Random) -> Problem:
    a, b = rng.sample(NAMES, 2)
    age, older, years = rng.randint(3, 15), rng.randint(1, 9), rng.randint(1, 9)
    return Problem(f"{a} is {age} years old. {b} is {older} years older than {a}. "
                   f"How old will {b} be in {years} years?", age + older + years,
                   (f"{age} + {older} = {age + older}", f"{age + older} + {years} = {age + older + years}"))


def _ages_times(rng: random.Random) -> Problem:
    child, factor = rng.randint(2, 12), rng.randint(2, 4)
    name = rng.choice(NAMES)
    return Problem(f"{name} is {child} years old. {name}'s grandfather is {factor} times as old as {name}. "
                   f"How old is the grandfather?", child * factor, (f"{child} * {factor} = {child * factor}",))


def _speed(rng: random.Random) -> Problem:
    vehicle, speed, hours = rng.choice(VEHICLES), rng.randint(2, 12) * 10, rng.randint(2, 4)
    return Problem(f"A {vehicle} travels at {speed} kilometers per hour for {hours} hours. "
                   f"How many kilometers does it travel?", speed * hours, (f"{speed} * {hours} = {speed * hours}",))


def _work_rate(rng: random.Random) -> Problem:
    item, rate, hours = rng.choice(ITEMS), rng.randint(2, 6), rng.randint(2, 5)
    return Problem(f"A machine makes {rate} {item}s every hour. "
                   f"How many hours does it take to make {rate * hours} {item}s?", hours,
                   (f"{rate * hours} / {rate} = {hours}",))


def _boxes(rng: random.Random) -> Problem:
    name, item, boxes, per_box = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 5), rng.randint(2, 5)
    total = boxes * per_box
    taken = rng.randint(1, total - 1)
    return Problem(f"There are {boxes} boxes with {per_box} {item}s in each box. {name} takes {taken} {item}s. "
                   f"How many {item}s are left in the boxes?", total - taken,
                   (f"{boxes} * {per_box} = {total}", f"{total} - {taken} = {total - taken}"))


def _savings(rng: random.Random) -> Problem:
    name, weekly, weeks = rng.choice(NAMES), rng.randint(2, 6), rng.randint(2, 4)
    saved = weekly * weeks
    spent = rng.randint(1, saved - 1)
    return Problem(f"{name} saves {weekly} dollars every week. After {weeks} weeks, {name} spends {spent} dollars. "
                   f"How many dollars does {name} have now?", saved - spent,
                   (f"{weekly} * {weeks} = {saved}", f"{saved} - {spent} = {saved - spent}"))


def _bus(rng: random.Random) -> Problem:
    start = rng.randint(5, 20)
    off, on = rng.randint(1, start - 1), rng.randint(1, 9)
    return Problem(f"A bus has {start} passengers. At the next stop {off} passengers get off and {on} get on. "
                   f"How many passengers are on the bus now?", start - off + on,
                   (f"{start} - {off} = {start - off}", f"{start - off} + {on} = {start - off + on}"))


TEMPLATES = (
    Template("more", _more), Template("give_away", _give_away),
    Template("shopping", _shopping), Template("change", _change), Template("sharing", _sharing),
    Template("keep_and_share", _keep_and_share), Template("ages", _ages), Template("ages_times", _ages_times),
    Template("speed", _speed), Template("work_rate", _work_rate), Template("boxes", _boxes),
    Template("savings", _savings), Template("bus", _bus),
)


def _draw_distinct(rng: random.Random, n: int, seen: set[str]) -> list[tuple[str, Problem]]:
    """`n` (template name, problem) pairs whose prompts are not in `seen` (added to it)."""
    problems = []
    for _ in range(n * _MAX_DRAWS_PER_ROW):
        if len(problems) == n:
            return problems
        template = rng.choice(TEMPLATES)
        problem = template.draw(rng)
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            problems.append((template.name, problem))
    raise ValueError(f"only {len(problems)} distinct problems of {n} requested; "
                     "lower --n-train / --n-eval / --n-sft")


def build_splits(seed: int = 0, n_train: int = 2000, n_eval: int = 64, n_sft: int = 1000) -> dict[str, list[dict]]:
    """`{"eval": rows, "train": rows, "sft": rows}`, drawn in that order: eval does not change with
    the other sizes, nor train with n_sft. SFT rows carry a `response`, worked or bare."""
    rng, seen = random.Random(seed), set()
    splits = {}
    for split, n in (("eval", n_eval), ("train", n_train), ("sft", n_sft)):
        splits[split] = []
        for i, (template, problem) in enumerate(_draw_distinct(rng, n, seen)):
            row = {"id": f"{SOURCE}-{split}-{i:05d}", "domain": "math", "prompt": problem.prompt,
                   "answer": str(problem.answer), "source": f"{SOURCE}/{template}"}
            if split == "sft":
                row["response"] = problem.response if rng.random() < WORKED_SHARE else problem.bare_response
            splits[split].append(row)
    return splits


FILES = {"eval": EVAL_FILE, "train": TRAIN_FILE, "sft": SFT_FILE}


def make_data(out: str | Path, **sizes: int) -> dict[str, int]:
    """Write every split into `out`; `sizes` are `build_splits`'s arguments. Returns row counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, rows in build_splits(**sizes).items():
        (out / FILES[split]).write_text("".join(json.dumps(row) + "\n" for row in rows))
        counts[FILES[split]] = len(rows)
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", dest="n_train", type=int, default=2000, help="RL training problems")
    p.add_argument("--n-eval", dest="n_eval", type=int, default=64, help="held-out problems")
    p.add_argument("--n-sft", dest="n_sft", type=int, default=1000, help="warm-up demonstrations")
    args = vars(p.parse_args())
    out = args.pop("out")
    print(json.dumps({"out": str(Path(out).resolve()), "rows": make_data(out, **args)}))


if __name__ == "__main__":
    main()
