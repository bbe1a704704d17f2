"""Arithmetic word problems for the SmolLM2 CPU example, generated offline and deterministically.

    python examples/smollm2_cpu/make_data.py --out runs/smollm2_cpu/data [--seed 0 --n-train 2000 --n-eval 64]

Each template is a short story (shopping, sharing, ages, rates, ...) over small integers with one or
two operations, so a 135M instruct model solves some of them and RL has something to sharpen.
Writes `train_math.jsonl` and `eval_math.jsonl` in the project's row schema (`id`, `domain`,
`prompt`, `answer`, `source`; source names the template). The held-out split is drawn first and no
prompt appears in both files.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SOURCE = "arith"
TRAIN_FILE, EVAL_FILE = "train_math.jsonl", "eval_math.jsonl"
NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack", "Kira", "Leo",
         "Maya", "Noah", "Olga", "Priya", "Sam", "Tara", "Umar", "Vera")
ITEMS = ("apple", "pencil", "notebook", "cookie", "marble", "sticker", "orange", "book", "toy car", "cupcake")
VEHICLES = ("train", "car", "truck", "boat")
_MAX_DRAWS_PER_ROW = 50  # rejection sampling for distinct prompts; far above what the sizes need


@dataclass(frozen=True)
class Template:
    """One kind of story: `draw` picks its numbers and returns (prompt, integer answer)."""

    name: str
    draw: Callable[[random.Random], tuple[str, int]]


def _more(rng: random.Random) -> tuple[str, int]:
    name, item, have, more = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 12), rng.randint(1, 9)
    return (f"{name} has {have} {item}s and gets {more} more. How many {item}s does {name} have now?",
            have + more)


def _give_away(rng: random.Random) -> tuple[str, int]:
    name, item, have = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(4, 15)
    given = rng.randint(1, have - 1)
    return (f"{name} has {have} {item}s and gives {given} of them to a friend. "
            f"How many {item}s does {name} have left?", have - given)


def _shopping(rng: random.Random) -> tuple[str, int]:
    name, item, count, price = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 5), rng.randint(2, 6)
    return (f"{name} buys {count} {item}s. Each {item} costs {price} dollars. "
            f"How many dollars does {name} spend?", count * price)


def _change(rng: random.Random) -> tuple[str, int]:
    name, item, count, price = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 4), rng.randint(2, 5)
    money = count * price + rng.randint(1, 10)
    return (f"{name} has {money} dollars and buys {count} {item}s that cost {price} dollars each. "
            f"How many dollars does {name} have left?", money - count * price)


def _sharing(rng: random.Random) -> tuple[str, int]:
    name, item, friends, each = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 5), rng.randint(2, 6)
    return (f"{name} has {friends * each} {item}s and shares them equally among {friends} friends. "
            f"How many {item}s does each friend get?", each)


def _keep_and_share(rng: random.Random) -> tuple[str, int]:
    name, item, friends, each = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 4), rng.randint(2, 5)
    kept = rng.randint(1, 6)
    return (f"{name} has {friends * each + kept} {item}s, keeps {kept} of them and shares the rest "
            f"equally among {friends} friends. How many {item}s does each friend get?", each)


def _ages(rng: random.Random) -> tuple[str, int]:
    a, b = rng.sample(NAMES, 2)
    age, older, years = rng.randint(3, 15), rng.randint(1, 9), rng.randint(1, 9)
    return (f"{a} is {age} years old. {b} is {older} years older than {a}. "
            f"How old will {b} be in {years} years?", age + older + years)


def _ages_times(rng: random.Random) -> tuple[str, int]:
    child, factor = rng.randint(2, 12), rng.randint(2, 4)
    name = rng.choice(NAMES)
    return (f"{name} is {child} years old. {name}'s grandfather is {factor} times as old as {name}. "
            f"How old is the grandfather?", child * factor)


def _speed(rng: random.Random) -> tuple[str, int]:
    vehicle, speed, hours = rng.choice(VEHICLES), rng.randint(2, 12) * 10, rng.randint(2, 4)
    return (f"A {vehicle} travels at {speed} kilometers per hour for {hours} hours. "
            f"How many kilometers does it travel?", speed * hours)


def _work_rate(rng: random.Random) -> tuple[str, int]:
    item, rate, hours = rng.choice(ITEMS), rng.randint(2, 6), rng.randint(2, 5)
    return (f"A machine makes {rate} {item}s every hour. "
            f"How many hours does it take to make {rate * hours} {item}s?", hours)


def _boxes(rng: random.Random) -> tuple[str, int]:
    name, item, boxes, per_box = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 5), rng.randint(2, 5)
    taken = rng.randint(1, boxes * per_box - 1)
    return (f"There are {boxes} boxes with {per_box} {item}s in each box. {name} takes {taken} {item}s. "
            f"How many {item}s are left in the boxes?", boxes * per_box - taken)


def _savings(rng: random.Random) -> tuple[str, int]:
    name, weekly, weeks = rng.choice(NAMES), rng.randint(2, 6), rng.randint(2, 4)
    spent = rng.randint(1, weekly * weeks - 1)
    return (f"{name} saves {weekly} dollars every week. After {weeks} weeks, {name} spends {spent} dollars. "
            f"How many dollars does {name} have now?", weekly * weeks - spent)


def _bus(rng: random.Random) -> tuple[str, int]:
    start = rng.randint(5, 20)
    off, on = rng.randint(1, start - 1), rng.randint(1, 9)
    return (f"A bus has {start} passengers. At the next stop {off} passengers get off and {on} get on. "
            f"How many passengers are on the bus now?", start - off + on)


TEMPLATES = (
    Template("more", _more), Template("give_away", _give_away),
    Template("shopping", _shopping), Template("change", _change), Template("sharing", _sharing),
    Template("keep_and_share", _keep_and_share), Template("ages", _ages), Template("ages_times", _ages_times),
    Template("speed", _speed), Template("work_rate", _work_rate), Template("boxes", _boxes),
    Template("savings", _savings), Template("bus", _bus),
)


def _draw_distinct(rng: random.Random, n: int, seen: set[str]) -> list[tuple[str, str, int]]:
    """`n` (template, prompt, answer) triples whose prompts are not in `seen` (added to it)."""
    problems = []
    for _ in range(n * _MAX_DRAWS_PER_ROW):
        if len(problems) == n:
            return problems
        template = rng.choice(TEMPLATES)
        prompt, answer = template.draw(rng)
        if prompt not in seen:
            seen.add(prompt)
            problems.append((template.name, prompt, answer))
    raise ValueError(f"only {len(problems)} distinct problems of {n} requested; lower --n-train / --n-eval")


def build_splits(seed: int = 0, n_train: int = 2000, n_eval: int = 64) -> dict[str, list[dict]]:
    """`{"train": rows, "eval": rows}`. Eval is drawn first, so it does not change with n_train."""
    rng, seen = random.Random(seed), set()
    splits = {}
    for split, n in (("eval", n_eval), ("train", n_train)):
        splits[split] = [
            {"id": f"{SOURCE}-{split}-{i:05d}", "domain": "math", "prompt": prompt, "answer": str(answer),
             "source": f"{SOURCE}/{template}"}
            for i, (template, prompt, answer) in enumerate(_draw_distinct(rng, n, seen))
        ]
    return splits


def make_data(out: str | Path, **sizes: int) -> dict[str, int]:
    """Write both splits into `out`; `sizes` are `build_splits`'s arguments. Returns row counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, rows in build_splits(**sizes).items():
        name = TRAIN_FILE if split == "train" else EVAL_FILE
        (out / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        counts[name] = len(rows)
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", dest="n_train", type=int, default=2000, help="training problems")
    p.add_argument("--n-eval", dest="n_eval", type=int, default=64, help="held-out problems")
    args = vars(p.parse_args())
    out = args.pop("out")
    print(json.dumps({"out": str(Path(out).resolve()), "rows": make_data(out, **args)}))


if __name__ == "__main__":
    main()
