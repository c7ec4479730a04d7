"""A sentence-pair task with one planted word-to-word interaction across the two segments, and its truth file.

Each example is two short "sentences" of common filler words. Sentence A holds one colour word at a
random position, sentence B another; the label is 1 when the two colour words are the same and 0
when they differ (balanced). No single word decides the label: the model has to compare the two
colour words, so the interaction runs between two words of different segments, not only through
[CLS]. Fillers never include a colour, and every word is one word piece in BERT's uncased vocabulary.

Written in MRPC's GLUE layout (``<out>/MRPC/train.tsv``, ``dev.tsv``: Quality, #1 ID, #2 ID, #1 String,
#2 String), so ``train.py`` trains on it with ``configs/mrpc.yaml --data.data_dir <out>``, plus
``<out>/truth.jsonl`` for ``analyze.py faithfulness --truth``: one line per dev example,
``{"index": i, "pairs": [[b, a]], "unit": "word"}`` with word positions over the non-special words
(sentence A's words, then sentence B's), ``b`` the colour word of sentence B (the query) and ``a``
the one of sentence A (the key).

    python benchmarks/planted_pairs.py --out data/planted-pairs --n_train 4000 --n_dev 500
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown", "pink")
FILLERS = (
    "the a man woman dog cat house car tree river city road book table window door garden child friend "
    "walked saw found took made gave kept left small large old new quiet happy early late near far there "
    "today always never often slowly quickly under over behind beside with without from into"
).split()


def make_example(rng: random.Random, same: bool) -> tuple[list[str], list[str], int, int]:
    """Two sentences, the colour word's position in each, and whether they match."""
    first = rng.choice(COLOURS)
    second = first if same else rng.choice([c for c in COLOURS if c != first])
    words_a = rng.choices(FILLERS, k=rng.randint(5, 9))
    words_b = rng.choices(FILLERS, k=rng.randint(5, 9))
    pos_a = rng.randint(0, len(words_a))
    pos_b = rng.randint(0, len(words_b))
    words_a.insert(pos_a, first)
    words_b.insert(pos_b, second)
    return words_a, words_b, pos_a, pos_b


def write_split(path: Path, rows: list[tuple[int, list[str], list[str]]], start_id: int) -> None:
    lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i, (label, words_a, words_b) in enumerate(rows):
        lines.append(f"{label}\t{start_id + 2 * i}\t{start_id + 2 * i + 1}\t{' '.join(words_a)}\t{' '.join(words_b)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n_train", type=int, default=4000)
    parser.add_argument("--n_dev", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    (out / "MRPC").mkdir(parents=True, exist_ok=True)
    truth = []
    for split, n, start in (("train", args.n_train, 1000000), ("dev", args.n_dev, 2000000)):
        rows = []
        for i in range(n):
            same = i % 2 == 0
            words_a, words_b, pos_a, pos_b = make_example(rng, same)
            rows.append((int(same), words_a, words_b))
            if split == "dev":
                truth.append({"index": i, "pairs": [[len(words_a) + pos_b, pos_a]], "unit": "word"})
        write_split(out / "MRPC" / f"{split}.tsv", rows, start)
    (out / "truth.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth), encoding="utf-8")
    print(json.dumps({"out": str(out), "train": args.n_train, "dev": args.n_dev, "truth": str(out / "truth.jsonl")}))


if __name__ == "__main__":
    main()
