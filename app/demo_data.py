"""A small, deterministic ShareGPT dataset for the demo and the tests.

Everyday arithmetic set in the Ellembelle Education context (Ghanaian names, cedis, places in the Western
Region), answered in one fixed style so that a few minutes of training visibly changes the model's answers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Kofi", "Ama", "Kwame", "Akosua", "Yaw", "Adwoa", "Kwesi", "Efua", "Kojo", "Abena", "Nana", "Esi"]
PLACES = ["Nkroful", "Axim", "Half Assini", "Esiama", "Aiyinase", "Takoradi", "Sekondi", "Tarkwa"]
ITEMS = [
    ("oranges", 2),
    ("exercise books", 5),
    ("pencils", 1),
    ("loaves of bread", 8),
    ("bottles of water", 3),
]
SYSTEM = "You are a patient maths tutor for pupils in Ellembelle, Ghana. Answer in one short sentence."


def _example(rng: random.Random) -> dict[str, object]:
    name, place = rng.choice(NAMES), rng.choice(PLACES)
    item, price = rng.choice(ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        count = rng.randint(2, 9)
        question = f"{name} buys {count} {item} in {place}. Each costs GH₵{price}. How much does {name} pay?"
        answer = f"{name} pays {count} × GH₵{price} = GH₵{count * price}."
    elif kind == 1:
        have, spend = rng.randint(20, 60), rng.randint(1, 19)
        question = f"{name} has GH₵{have} at the market in {place} and spends GH₵{spend}. How much is left?"
        answer = f"{name} has GH₵{have} − GH₵{spend} = GH₵{have - spend} left."
    else:
        friends, each = rng.randint(2, 6), rng.randint(2, 9)
        total = friends * each
        question = f"{name} shares GH₵{total} equally among {friends} friends in {place}. How much does each get?"
        answer = f"Each friend gets GH₵{total} ÷ {friends} = GH₵{each}."
    conversation = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.3:
        conversation.insert(0, {"role": "system", "content": SYSTEM})
    return {"conversations": conversation}


def generate(n: int, seed: int = 3407) -> list[dict[str, object]]:
    """n different conversations (a repeated one is a bad row to the validation); the same seed, the same list."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    while len(rows) < n:
        row = _example(rng)
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def write_splits(data_dir: Path, sizes: tuple[int, int, int] = (160, 20, 20), seed: int = 3407) -> dict[str, Path]:
    """Write data/splits/{train,val,test}.jsonl; the same seed always gives the same files."""
    rows = generate(sum(sizes), seed)
    splits_dir = data_dir / "splits"
    splits_dir.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for name, size in zip(("train", "val", "test"), sizes, strict=True):
        path = splits_dir / f"{name}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows[start : start + size]))
        tmp.replace(path)
        paths[name] = path
        start += size
    return paths
