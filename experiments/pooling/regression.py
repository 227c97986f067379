"""A regression task on real sentence pairs from the GLUE files alone: the word overlap (Jaccard index of the
lower-cased word sets) of each MRPC pair, a similarity score in [0, 1]. Used by ``run.sh`` to check the head on a
regression task (no STS-B here offline).

    .venv/bin/python experiments/pooling/regression.py /tmp/exp/overlap     # writes train.csv (3668), dev.csv (408)
"""

from __future__ import annotations

import csv
import os
import re
import sys


def pairs(path: str):
    with open(path, encoding="utf-8-sig") as f:  # MRPC starts with a byte-order mark; quoting off (GLUE's README)
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        for row in rows:
            yield row[3], row[4]


def overlap(a: str, b: str) -> float:
    wa, wb = (set(re.findall(r"[a-z0-9']+", s.lower())) for s in (a, b))
    return len(wa & wb) / len(wa | wb)


def main(out: str) -> None:
    glue = os.environ.get("GLUE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "glue")
    os.makedirs(out, exist_ok=True)
    for split, src in (("train", "train.tsv"), ("dev", "dev.tsv")):
        with open(os.path.join(out, f"{split}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sentence1", "sentence2", "label"])
            for a, b in pairs(os.path.join(glue, "MRPC", src)):
                w.writerow([a, b, f"{overlap(a, b):.4f}"])


if __name__ == "__main__":
    main(sys.argv[1])
