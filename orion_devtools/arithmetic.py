"""Multi-step arithmetic word problems, generated from a seed: the `arithmetic` benchmark and training pool.

A task a 135M student can learn on 2 cores in minutes (docs/arithmetic.md): one to three steps of two-digit
addition, subtraction and one-digit multiplication, each with a gold answer and a worked solution that does the
column arithmetic digit by digit and ends in ``\\boxed{answer}`` (the replay teacher's CoT). The test split is
drawn first; a training problem is kept only if it shares no 13-gram with any test problem (the pipeline's own
decontamination, so it drops none) and is not a test problem.

    python -m orion_devtools.arithmetic            # rewrites the two shipped files
    python -m orion_devtools.arithmetic --check    # exits 1 if they differ from what the seed makes
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from orion_assets.method.problems import ngrams, normalize_text

SEED = 20261207
TEST_SIZE = 300
TRAIN_SIZE = 2000
NGRAM = 13
DATA = Path(__file__).resolve().parents[1] / "orion_assets" / "data"
TEST_FILE = DATA / "benchmarks" / "arithmetic_test.jsonl"
TRAIN_FILE = DATA / "train" / "arithmetic_train.jsonl"

NAMES = (
    ("Sam", "he"), ("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Omar", "he"), ("Lena", "she"), ("Ravi", "he"),
    ("Zoe", "she"), ("Ivan", "he"), ("Nora", "she"), ("Kofi", "he"), ("Yuki", "she"), ("Tom", "he"), ("Ines", "she"),
    ("Ben", "he"), ("Maya", "she"), ("Hugo", "he"), ("Lila", "she"), ("Eli", "he"), ("Rosa", "she"),
)
# (item, container) pairs: "3 boxes of 12 pens".
THINGS = (
    ("apples", "bags"), ("pens", "boxes"), ("stickers", "packs"), ("marbles", "jars"), ("cookies", "trays"),
    ("eggs", "cartons"), ("pencils", "cases"), ("stamps", "sheets"), ("beads", "strings"), ("flowers", "bunches"),
    ("cards", "decks"), ("buttons", "cups"), ("shells", "buckets"), ("candles", "crates"), ("books", "shelves"),
)
PLACES = ("shop", "store", "market", "stall", "warehouse", "kiosk")


@dataclass(frozen=True)
class Problem:
    id: str
    level: int
    question: str
    answer: int
    solution: str


def _column_add(a: int, b: int) -> str:
    """Two-digit addition in columns, briefly: the ones with their carry, then the tens."""
    ones = a % 10 + b % 10
    carry = ones // 10
    tens = f"{a // 10} + {b // 10}" + (" + 1" if carry else "") + f" = {a // 10 + b // 10 + carry}"
    return f"{a} + {b}: {a % 10} + {b % 10} = {ones}" + (", carry 1" if carry else "") + f"; {tens}. So {a + b}."


def _column_sub(a: int, b: int) -> str:
    """Subtraction of a smaller number in columns, borrowing when the ones do not suffice."""
    if a % 10 >= b % 10:
        return f"{a} - {b}: {a % 10} - {b % 10} = {a % 10 - b % 10}; {a // 10} - {b // 10} = {a // 10 - b // 10}. So {a - b}."
    return (f"{a} - {b}: {a % 10 + 10} - {b % 10} = {a % 10 + 10 - b % 10}, borrow 1; "
            f"{a // 10} - 1 - {b // 10} = {a // 10 - 1 - b // 10}. So {a - b}.")


def _product(count: int, each: int, containers: str) -> str:
    return f"{count} {containers} of {each}: {count} x {each} = {count * each}."


def _level1(rng: random.Random) -> tuple[str, int, str]:
    name, pronoun = rng.choice(NAMES)
    items, _ = rng.choice(THINGS)
    a = rng.randint(12, 89)
    if rng.random() < 0.5:
        b = rng.randint(11, 99 - a) if a < 88 else 11
        question = f"{name} has {a} {items}. {pronoun.capitalize()} gets {b} more {items}. How many {items} does {name} have now?"
        return question, a + b, _column_add(a, b)
    b = rng.randint(11, a - 1)
    question = f"{name} has {a} {items}. {pronoun.capitalize()} gives away {b} {items}. How many {items} does {name} have left?"
    return question, a - b, _column_sub(a, b)


def _level2(rng: random.Random) -> tuple[str, int, str]:
    name, pronoun = rng.choice(NAMES)
    items, containers = rng.choice(THINGS)
    count, each = rng.randint(2, 9), rng.randint(2, 9)
    a = rng.randint(11, 99 - count * each)
    question = (f"{name} has {a} {items}. {pronoun.capitalize()} buys {count} {containers} with {each} {items} in each. "
                f"How many {items} does {name} have now?")
    return question, a + count * each, f"{_product(count, each, containers)}\n{_column_add(a, count * each)}"


def _level3(rng: random.Random) -> tuple[str, int, str]:
    place = rng.choice(PLACES)
    items, containers = rng.choice(THINGS)
    count, each = rng.randint(2, 9), rng.randint(2, 9)
    a = rng.randint(11, 99 - count * each)
    total = a + count * each
    sold = rng.randint(11, total - 1)
    question = (f"A {place} has {a} {items}. It receives {count} {containers} of {each} {items}, then it sells {sold} "
                f"{items}. How many {items} does the {place} have left?")
    steps = f"{_product(count, each, containers)}\n{_column_add(a, count * each)}\n{_column_sub(total, sold)}"
    return question, total - sold, steps


LEVELS = {1: _level1, 2: _level2, 3: _level3}


def make_problem(rng: random.Random, level: int, number: int, split: str) -> Problem:
    question, answer, steps = LEVELS[level](rng)
    return Problem(f"{split}-{number:05d}", level, question, answer, f"{steps}\nThe answer is \\boxed{{{answer}}}.")


def generate(seed: int = SEED, test_size: int = TEST_SIZE, train_size: int = TRAIN_SIZE) -> tuple[list[Problem], list[Problem]]:
    """(test, train): levels in turn; no train question equals or shares a 13-gram with a test question."""
    rng = random.Random(seed)
    test: list[Problem] = []
    seen: set[str] = set()
    while len(test) < test_size:
        problem = make_problem(rng, len(test) % 3 + 1, len(test), "test")
        if normalize_text(problem.question) not in seen:
            seen.add(normalize_text(problem.question))
            test.append(problem)
    test_grams = set().union(*(ngrams(p.question, NGRAM) for p in test))
    train: list[Problem] = []
    while len(train) < train_size:
        problem = make_problem(rng, len(train) % 3 + 1, len(train), "train")
        key = normalize_text(problem.question)
        if key not in seen and not ngrams(problem.question, NGRAM) & test_grams:
            seen.add(key)
            train.append(problem)
    return test, train


def _jsonl(problems: list[Problem]) -> str:
    return "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) the shipped arithmetic benchmark and training pool.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the shipped files differ from the seed's")
    args = parser.parse_args(argv)
    test, train = generate()
    stale = []
    for path, problems in ((TEST_FILE, test), (TRAIN_FILE, train)):
        text = _jsonl(problems)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"{path}: {len(problems)} problems")
    if stale:
        print("differs from what seed", SEED, "makes:", *stale, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
