"""A small, deterministic ShareGPT dataset for the demo and the tests.

Everyday arithmetic and questions set in the Ellembelle Education context (Ghanaian names, cedis, places in
the Western Region), each kind answered in one fixed sentence form, so that a few minutes of training
visibly changes the model's answers and the change can be measured on a held-out test split. No question
appears in two splits. A glossary of the local terms (names, places, the cedi sign) goes with it, for the
localization score.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

NAMES = ["Kofi", "Ama", "Kwame", "Akosua", "Yaw", "Adwoa", "Kwesi", "Efua", "Kojo", "Abena", "Nana", "Esi"]
PLACES = ["Nkroful", "Axim", "Half Assini", "Esiama", "Aiyinase", "Takoradi", "Sekondi", "Tarkwa"]
ITEMS = [
    ("oranges", 2),
    ("exercise books", 5),
    ("pencils", 1),
    ("loaves of bread", 8),
    ("bottles of water", 3),
    ("tins of milo", 6),
]
CEDI = "GH₵"
SYSTEM = "You are a patient maths tutor for pupils in Ellembelle, Ghana. Answer in one short sentence."
SIZES = (240, 24, 40)  # train, val, test


def _buy(rng: random.Random, name: str, place: str) -> tuple[str, str]:
    item, price = rng.choice(ITEMS)
    count = rng.randint(2, 9)
    return (
        f"{name} buys {count} {item} in {place}. Each costs {CEDI}{price}. How much does {name} pay?",
        f"{name} pays {count} × {CEDI}{price} = {CEDI}{count * price}.",
    )


def _change(rng: random.Random, name: str, place: str) -> tuple[str, str]:
    have, spend = rng.randint(20, 60), rng.randint(1, 19)
    return (
        f"{name} has {CEDI}{have} at the market in {place} and spends {CEDI}{spend}. How much is left?",
        f"{name} has {CEDI}{have} − {CEDI}{spend} = {CEDI}{have - spend} left.",
    )


def _share(rng: random.Random, name: str, place: str) -> tuple[str, str]:
    friends, each = rng.randint(2, 6), rng.randint(2, 9)
    return (
        f"{name} shares {CEDI}{friends * each} equally among {friends} friends in {place}. How much does each get?",
        f"Each friend gets {CEDI}{friends * each} ÷ {friends} = {CEDI}{each}.",
    )


def _walk(rng: random.Random, name: str, place: str) -> tuple[str, str]:
    km = rng.randint(1, 9)
    return (
        f"{name} walks {km} km from home to school in {place} and {km} km back. How far is that each day?",
        f"{name} walks {km} km + {km} km = {2 * km} km each day.",
    )


def _region(rng: random.Random, name: str, place: str) -> tuple[str, str]:
    return (
        f"{name} goes to school in {place}. In which region of Ghana is that?",
        f"{place} is in the Western Region of Ghana.",
    )


KINDS: list[Callable[[random.Random, str, str], tuple[str, str]]] = [_buy, _change, _share, _walk, _region]


def _example(rng: random.Random) -> dict[str, object]:
    name, place = rng.choice(NAMES), rng.choice(PLACES)
    question, answer = rng.choice(KINDS)(rng, name, place)
    conversation = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.3:
        conversation.insert(0, {"role": "system", "content": SYSTEM})
    return {"conversations": conversation}


def generate(n: int, seed: int = 3407) -> list[dict[str, object]]:
    """n examples with n different questions (a repeated conversation is a bad row to the validation); the same
    seed always gives the same list."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    while len(rows) < n:
        row = _example(rng)
        question = row["conversations"][-2]["content"]  # type: ignore[index]
        if question not in seen:
            seen.add(question)
            rows.append(row)
    return rows


def glossary() -> list[str]:
    """The local terms the localization score looks for: names, places and the cedi sign."""
    return [*NAMES, *PLACES, CEDI, "Western Region"]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_splits(data_dir: Path, sizes: tuple[int, int, int] = SIZES, seed: int = 3407) -> dict[str, Path]:
    """Write data/splits/{train,val,test}.jsonl and data/glossary.json; the same seed gives the same files."""
    rows = generate(sum(sizes), seed)
    splits_dir = data_dir / "splits"
    splits_dir.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for name, size in zip(("train", "val", "test"), sizes, strict=True):
        path = splits_dir / f"{name}.jsonl"
        _write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows[start : start + size]))
        paths[name] = path
        start += size
    paths["glossary"] = data_dir / "glossary.json"
    _write(paths["glossary"], json.dumps(glossary(), ensure_ascii=False, indent=1) + "\n")
    return paths
