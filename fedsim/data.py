"""Data: the embedded BANKING77 set or a local CSV pair, seeded client partitions, dynamic-padding batches."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsim.types import FedsimError

if TYPE_CHECKING:
    from fedsim.config import DataConfig, PartitionConfig

EMBEDDED = {"banking77": Path(__file__).parent / "data" / "banking77"}


@dataclass
class TextDataset:
    texts: list[str]
    labels: np.ndarray  # int64 label ids


@dataclass
class Corpus:
    train: TextDataset
    test: TextDataset
    label_names: list[str]


def _read_csv(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise FedsimError(f"{path}: no such file (data.dataset must be 'banking77' or a directory with train.csv and test.csv)")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            for column, field in ((text_column, "data.text_column"), (label_column, "data.label_column")):
                if column not in columns:
                    raise FedsimError(f"{path}: {field}={column!r} is not a column; columns are {columns}")
            texts, labels = [], []
            end = reader.line_num
            for row in reader:
                start, end = end + 1, reader.line_num
                if None in row or None in row.values():  # DictReader's markers of a row with too many / too few fields
                    found = len(columns) + len(row.get(None) or []) - sum(v is None for k, v in row.items() if k is not None)
                    spans = f" (the row runs on to line {end}: an unclosed quote?)" if end > start else ""
                    raise FedsimError(f"{path}: line {start}: {found} fields, the header has {len(columns)}{spans}")
                if row[label_column] == "":
                    raise FedsimError(f"{path}: line {start}: empty {label_column!r} (data.label_column)")
                texts.append(row[text_column])
                labels.append(row[label_column])
    except UnicodeDecodeError as exc:
        raise FedsimError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise FedsimError(f"{path}: not a valid CSV file ({exc})") from None
    except OSError as exc:
        raise FedsimError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not texts:
        raise FedsimError(f"{path}: no rows")
    return texts, labels


def _read_categories(path: Path) -> list[str]:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FedsimError(f"{path}: not a JSON list of label names ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise FedsimError(f"{path}: expected a JSON list of distinct label names (strings)")
    return names


@lru_cache(maxsize=4)
def _load_corpus_cached(dataset: str, text_column: str, label_column: str) -> Corpus:
    root = EMBEDDED.get(dataset, Path(dataset))
    if not root.is_dir():
        raise FedsimError(f"data.dataset={dataset!r}: not 'banking77' and not a directory with train.csv and test.csv")
    train_texts, train_labels = _read_csv(root / "train.csv", text_column, label_column)
    test_texts, test_labels = _read_csv(root / "test.csv", text_column, label_column)
    categories = root / "categories.json"
    names = _read_categories(categories) if categories.is_file() else sorted(set(train_labels))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(test_labels) - set(index)) + sorted(set(train_labels) - set(index))
    if unknown:
        raise FedsimError(f"{root}: label {unknown[0]!r} is not among the {len(names)} training labels")
    return Corpus(
        TextDataset(train_texts, np.array([index[x] for x in train_labels], dtype=np.int64)),
        TextDataset(test_texts, np.array([index[x] for x in test_labels], dtype=np.int64)),
        list(names),
    )


def load_corpus(config: DataConfig) -> Corpus:
    corpus = _load_corpus_cached(config.dataset, config.text_column, config.label_column)
    return select_labels(corpus, config.labels) if config.labels else corpus


def select_labels(corpus: Corpus, labels: list[str] | dict[str, list[str]]) -> Corpus:
    """The corpus restricted to `data.labels`: a list keeps those labels (relabelled 0.. in its order), a mapping
    {new: [old, ...]} merges each group into label `new` (in the mapping's order); other examples are dropped."""
    groups = labels if isinstance(labels, dict) else {name: [name] for name in labels}
    members = [old for group in groups.values() for old in group]
    unknown = [n for n in members if n not in corpus.label_names]
    if unknown or len(set(members)) != len(members) or any(not group for group in groups.values()):
        problem = f"{unknown[0]!r} is not a label of the data set" if unknown else "a label is listed twice, or a group is empty"
        raise FedsimError(f"data.labels: {problem}; the labels are {', '.join(corpus.label_names[:5])}, ... ({len(corpus.label_names)} in all)")
    remap = np.full(len(corpus.label_names), -1)
    for new_id, group in enumerate(groups.values()):
        remap[[corpus.label_names.index(old) for old in group]] = new_id

    def subset(data: TextDataset) -> TextDataset:
        keep = np.flatnonzero(remap[data.labels] >= 0)
        return TextDataset([data.texts[i] for i in keep], remap[data.labels[keep]].astype(np.int64))

    return Corpus(subset(corpus.train), subset(corpus.test), list(groups))


# --- partitioners -----------------------------------------------------------------------------


def partition(labels: np.ndarray, num_clients: int, config: PartitionConfig, seed: int) -> list[np.ndarray]:
    """Split example indices among clients. Seeded and deterministic; every client gets >= min_examples.

    - iid: a random permutation cut into equal parts.
    - dirichlet: per class, proportions ~ Dir(alpha) over clients (label skew).
    - quantity_skew: client sizes ~ Dir(alpha), labels IID (size skew); sizes are rounded down, so up to one
      example per client is left unused.
    """
    n = len(labels)
    if num_clients * config.min_examples > n:
        raise FedsimError(f"clients.num_clients={num_clients} x data.partition.min_examples={config.min_examples} exceeds the {n} training examples")
    rng = np.random.default_rng([seed, 7001])
    if config.kind == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif config.kind == "quantity_skew":
        shares = rng.dirichlet(np.full(num_clients, config.alpha))
        sizes = config.min_examples + np.floor(shares * (n - num_clients * config.min_examples)).astype(int)
        cuts = np.cumsum(sizes)[:-1]
        parts = np.split(rng.permutation(n)[: sizes.sum()], cuts)
    else:
        buckets: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            props = rng.dirichlet(np.full(num_clients, config.alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                buckets[client].extend(chunk.tolist())
        # Top up starved clients from the largest ones so that every client can train: the donor's last-added examples,
        # i.e. its highest-numbered classes (deterministic; at the defaults no client is starved, at extreme alphas the
        # realised skew is then not exactly Dir(alpha)).
        for client in range(num_clients):
            while len(buckets[client]) < config.min_examples:
                donor = max(range(num_clients), key=lambda c: len(buckets[c]))
                buckets[client].append(buckets[donor].pop())
        parts = [np.array(b, dtype=np.int64) for b in buckets]
    return [np.sort(p.astype(np.int64)) for p in parts]


# --- tokenisation and batching ------------------------------------------------------------------


class Tokenized:
    """Token ids of a dataset, unpadded; `batch(indices)` pads to the batch's own longest text."""

    def __init__(self, token_ids: list[list[int]], labels: np.ndarray, pad_id: int):
        self.token_ids = token_ids
        self.labels = labels
        self.pad_id = pad_id
        self.lengths = np.array([len(t) for t in token_ids])

    def __len__(self) -> int:
        return len(self.token_ids)

    def batch(self, indices: np.ndarray, pad_to: int | None = None) -> dict:
        """{input_ids, attention_mask, labels} as torch tensors, padded to the batch's longest row (or `pad_to`)."""
        import torch  # here, so that reading and checking data (fedsim validate) needs no torch

        width = pad_to or int(self.lengths[indices].max())
        ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            seq = self.token_ids[i][:width]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.as_tensor(self.labels[indices])}


def tokenize(tokenizer, dataset: TextDataset, max_length: int) -> Tokenized:
    encoded = tokenizer(dataset.texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    return Tokenized(encoded, dataset.labels, pad_id(tokenizer))


def pad_id(tokenizer) -> int:
    """The id that fills padded positions: the tokenizer's pad token, else its end token (GPT-2's and Llama's
    tokenizers have no pad token; HF's examples pad with eos), else 0. The attention mask hides it either way."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def split_validation(n_train: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation indices, the rest) of the training set; seeded; no validation when `size` is 0."""
    if size == 0:
        return np.zeros(0, dtype=np.int64), np.arange(n_train)
    if size >= n_train:
        raise FedsimError(f"data.validation_samples={size} leaves no training data (the training set has {n_train} examples)")
    held = np.sort(np.random.default_rng([seed, 7004]).choice(n_train, size, replace=False))
    return held, np.setdiff1d(np.arange(n_train), held)
