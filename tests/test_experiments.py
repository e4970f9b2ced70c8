"""experiments/: the generalization studies (Tables 3 to 6), the fact-level study and full vs LoRA run end to end
(--quick) and write well-formed tables."""

from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The tier run by `make test-all` only: three studies end to end, many minutes on a CPU. The whole
# suite once took 40 min on a loaded machine, so this one test gets 40 min rather than the
# default per-test limit (pyproject.toml).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"table6": "table6_best_of.py"}  # Tables 3, 4 and 5: test_quick_tables_3_4_and_5
COLUMNS = ["# correct", "# incorrect", "% score", "# no fact", "% fact precision"]
CELL = re.compile(r"^(-|\d+\.\d\d ± \d+\.\d\d)$")  # mean ± sd over seeds, or "-" when nothing to score


def _run(script: str, runs: Path, tables: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--quick", "--seeds", "3",
                           "-o", str(runs), "--tables", str(tables)], capture_output=True, text=True, cwd=ROOT)


def _markdown_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first Markdown table in `text`."""
    all_lines = text.splitlines()
    first = next(i for i, line in enumerate(all_lines) if line.startswith("|"))
    lines = list(itertools.takewhile(lambda line: line.startswith("|"), all_lines[first:]))
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    assert set(lines[1].replace("|", "")) <= set("-:")  # the separator row
    return split(lines[0]), [split(line) for line in lines[2:]]


def test_quick_studies_write_well_formed_tables_and_resume(tmp_path: Path):
    runs, tables = tmp_path / "runs", tmp_path / "tables"
    for name, script in SCRIPTS.items():
        proc = _run(script, runs, tables)
        assert proc.returncode == 0, proc.stderr[-3000:]
        headers, rows = _markdown_rows((tables / f"{name}.md").read_text())
        assert all(c in headers for c in COLUMNS)
        data = json.loads((tables / f"{name}.json").read_text())
        assert data["seeds"] == [3] and data["columns"] == headers[-len(data["columns"]):]
        assert len(rows) == len(data["rows"]) >= 2
        for row, record in zip(rows, data["rows"]):
            assert len(row) == len(headers)
            for cell in row[-len(data["columns"]):]:
                assert CELL.match(cell), (name, cell)
            score = record["% score"]
            assert score is not None and 0.0 <= score["mean"] <= 100.0
        png = (tables / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000

    table6 = json.loads((tables / "table6.json").read_text())
    assert [r["model"] for r in table6["rows"]] == ["base", "maskdpo"]
    assert all(r["best-of-1"] and r["best-of-4"] for r in table6["rows"])
    base, maskdpo = table6["rows"]
    for n in (1, 4):  # the gap is paired seed by seed; one seed gives no interval, so nothing is detected
        gap = table6["paired"][f"best-of-{n}"]
        assert gap["mean"] == pytest.approx(maskdpo["per_seed"][0][f"best-of-{n}"] - base["per_seed"][0][f"best-of-{n}"])
        assert gap["low"] is None
    assert "N=4: " in (tables / "table6.md").read_text() and "not detected (underpowered)" in (tables / "table6.md").read_text()
    # What the kept answers hold: at N=1 the filler per answer is eval's own count, spread over the questions.
    questions = len((runs / "seed3" / "world" / "test_questions.jsonl").read_text().splitlines())
    for row in table6["rows"]:
        kept = table6["kept"][row["model"]]["3"]
        assert kept["1"]["nofact"] * questions == pytest.approx(row["per_seed"][0]["# no fact"])
        assert kept["4"]["ok"] >= 0 and kept["4"]["nofact"] >= 0

    # A rerun trains and samples nothing again: every step's output is already there.
    proc = _run(SCRIPTS["table6"], runs, tables)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "$ maskdpo train" not in proc.stderr and "$ maskdpo world" not in proc.stderr

    _check_fact_level(runs, tables)  # on the same seed's world, policy and annotations
    _check_lora_vs_full(runs, tables)


TABLE5_EMBEDDERS = ("policy-seen", "policy-name", "minilm")


def _check_table5(runs: Path, tables: Path) -> None:
    proc = _run("table5_clusters.py", runs, tables)  # its own world: --kinds 3 --questions-per-topic 3
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tables / "table5.json").read_text())
    assert data["seeds"] == [3] and set(data["embedders"]) == set(TABLE5_EMBEDDERS)
    assert (data["settings"]["kinds"], data["settings"]["questions_per_topic"]) == (3, 3)
    for e in TABLE5_EMBEDDERS:
        figures = {split: data["per_seed"][f"{e} {split}"]["3"] for split in ("near", "far", "random")}
        # equal split sizes, as the written files say too
        assert figures["near"]["pairs"] == figures["far"]["pairs"] == figures["random"]["pairs"] > 0
        sizes = {len((runs / "seed3-k3q3" / "table5" / f"clusters-{e}" / f"{split}.jsonl").read_text().splitlines())
                 for split in figures}
        assert sizes == {figures["near"]["pairs"]}
        for f in figures.values():
            assert 0.0 <= f["truly_near"] <= 1.0 and 0.0 <= f["score"] <= 100.0
        # paired differences, one seed: a mean, no interval, so nothing is detected
        for difference in ("near - far", "near - random", "far - random"):
            stat = data["paired"][e][difference]["score"]
            a, b = difference.split(" - ")
            assert stat["mean"] == pytest.approx(figures[a]["score"] - figures[b]["score"])
            assert stat["low"] is None and stat["detected"] is False
    assert 0.0 <= data["seed_info"]["3"]["chance"] <= 1.0
    md = (tables / "table5.md").read_text()
    assert "QUICK MODE" in md and md.count("not detected (underpowered)") >= 9
    assert all(f"| {e} | near - far |" in md for e in TABLE5_EMBEDDERS)
    png = (tables / "table5.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    # A rerun trains nothing again.
    proc = _run("table5_clusters.py", runs, tables)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "$ maskdpo train" not in proc.stderr and "$ maskdpo cluster" not in proc.stderr


ARMS = ["base", "dpo", "maskdpo", "maskdpo-neutral", "maskdpo-span", "maskdpo-span-neutral", "dpo-neutral"]


def _check_fact_level(runs: Path, tables: Path) -> None:
    proc = _run("fact_level.py", runs, tables)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tables / "fact_level.json").read_text())
    assert data["seeds"] == [3] and list(data["per_seed"]) == ARMS
    for arm in ARMS:
        figures = data["per_seed"][arm]["3"]
        assert set(figures) == set(data["metrics"])
        assert 0.0 <= figures["probe"] <= 100.0 and 0.0 <= figures["score"] <= 100.0
        assert 0.0 <= figures["probe_trained"] <= 100.0
        assert figures["filler"] >= 0 and figures["correct_facts"] >= 0 and figures["incorrect_facts"] >= 0
    # Paired differences are arm minus base, seed by seed; one seed has no interval.
    diff = data["paired"]["base"]["maskdpo"]["probe"]
    assert diff["mean"] == data["per_seed"]["maskdpo"]["3"]["probe"] - data["per_seed"]["base"]["3"]["probe"]
    assert diff["low"] is None and diff["n"] == 1
    # Without an interval the probe cannot be shown to rise, so no arm passes the bar on one seed.
    assert set(data["verdict"]) == set(ARMS[1:]) and not any(v["knows_more"] for v in data["verdict"].values())
    # Every arm trains on the same questions: the four pairings are cut to the ones all of them pair.
    pairs = [{json.loads(line)["id"] for line in path.read_text().splitlines()}
             for path in sorted((runs / "seed3" / "fact_level").glob("pairs.*.jsonl")) if ".all." not in path.name]
    assert len(pairs) == 4 and all(p == pairs[0] for p in pairs) and pairs[0]
    md = (tables / "fact_level.md").read_text()
    assert "QUICK MODE" in md and "Paired differences against base" in md and "Knows more rather than says less" in md
    png = (tables / "fact_level.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def _check_lora_vs_full(runs: Path, tables: Path) -> None:
    # the sweep on the study's own seed here, so that the suite pretrains no second policy
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "lora_vs_full.py"), "--quick", "--seeds", "3",
                           "--sweep-seed", "3", "-o", str(runs), "--tables", str(tables)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tables / "lora_vs_full.json").read_text())
    sweep = data["sweep"]
    assert set(sweep["score"]) == set(sweep["fact_precision"]) == {"full", "lora-lr0.0001", "lora-lr0.001"}
    best = max(sweep["fact_precision"][f"lora-lr{lr:g}"] for lr in (1e-4, 1e-3))
    # the rate of the highest fact precision (not % score, which filler can game) is the one used
    assert sweep["fact_precision"][f"lora-lr{data['lora']['lr']:g}"] == best
    for arm in ("full", "lora"):
        figures = data["per_seed"][arm]["3"]
        assert figures["train_s"] > 0 and 0.1 < figures["peak_rss_gib"] < 24
        assert 0.0 <= figures["score"] <= 100.0
    # LoRA really trained an adapter, at the chosen rate, next to a full run of the same pairs
    lora_run = json.loads((runs / "seed3" / "lora_study" / f"lora-lr{data['lora']['lr']:g}" / "run.json").read_text())
    assert lora_run["lora"]["r"] == 8 and lora_run["lr"] == data["lora"]["lr"]
    assert "lora" not in json.loads((runs / "seed3" / "lora_study" / "full" / "run.json").read_text())
    diff = data["paired"]["lora - full"]["score"]
    assert diff["mean"] == pytest.approx(data["per_seed"]["lora"]["3"]["score"] - data["per_seed"]["full"]["3"]["score"])


def test_fact_level_verdict_by_hand():
    sys.path.insert(0, str(ROOT / "experiments"))
    import common
    import fact_level

    base = {"incorrect_facts": 2.0, "correct_facts": 2.0, "filler": 0.5, "probe": 50.0}
    good = {"incorrect_facts": 1.7, "correct_facts": 1.96, "filler": 0.7, "probe": 52.0}  # -15%, 0.98, +0.2
    values = {"base": {1: base, 2: base, 3: base},
              "a": {1: good, 2: {**good, "probe": 53.0}, 3: {**good, "probe": 54.0}},
              "b": {1: good, 2: {**good, "correct_facts": 1.9, "probe": 53.0}, 3: {**good, "probe": 54.0}},
              "c": {1: good, 2: {**good, "probe": 47.0}, 3: {**good, "probe": 54.0}}}
    seeds = [1, 2, 3]
    a = fact_level.verdict(values, "a", seeds)
    assert a["knows_more"] is True and json.loads(json.dumps(a)) == a  # plain JSON values
    b = fact_level.verdict(values, "b", seeds)  # correct facts fall below 0.98 of base on seed 2
    assert b["per_seed"]["2"]["correct_kept_98pct"] is False and b["knows_more"] is False
    c = fact_level.verdict(values, "c", seeds)  # the probe rises on average, but its interval includes 0
    assert all(c["on_every_seed"].values()) and c["probe_rises"] is False and c["knows_more"] is False
    # probe differences 2, 3, 4: mean 3, sd 1, t(0.975, 2) = 4.303 -> 3 ± 2.484
    interval = common.paired(values, "a", "base", "probe", seeds)
    assert interval["mean"] == pytest.approx(3.0) and interval["low"] == pytest.approx(3 - 4.302653 / 3 ** 0.5)


def test_table5_truly_near_share_and_detection_by_hand(tmp_path: Path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import common
    import table5_clusters

    # near is the same kind in the same region (affinity 2); one level shared is not near
    topics = {name: {"id": name, "kind": kind, "region": region}
              for name, kind, region in [("test ship A", "ship", "A"), ("ship A", "ship", "A"),
                                         ("person A", "person", "A"), ("ship B", "ship", "B")]}
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "assignment.json").write_text(json.dumps(
        [{"topic": t, "cluster": "test ship A"} for t in ("ship A", "person A", "ship B")]))
    (clusters / "near.jsonl").write_text("".join(json.dumps({"topic": t}) + "\n"
                                                 for t in ("ship A", "ship A", "person A")))
    (clusters / "far.jsonl").write_text(json.dumps({"topic": "ship B"}) + "\n")
    assert table5_clusters.truly_near_share(clusters, "near", topics) == 0.5  # topics, not records
    assert table5_clusters.truly_near_share(clusters, "far", topics) == 0.0
    assert common.detected({"mean": 1.0, "low": 0.1, "high": 1.9})
    assert common.detected({"mean": -1.0, "low": -1.9, "high": -0.1})
    assert not common.detected({"mean": 1.0, "low": -0.1, "high": 2.1})
    assert not common.detected({"mean": 1.0, "low": None, "high": None})  # one seed: no interval
    assert common.fmt_paired({"mean": 1.0, "low": -0.1, "high": 2.1}) == \
        "+1.00 [-0.10, +2.10] not detected (underpowered)"


# ---------------------------------------------------------------- Tables 4 and 3 (3 kinds, 3 questions per entity)

WORLD_K3Q3 = "seed3-k3q3"


def test_quick_tables_3_4_and_5(tmp_path: Path):
    """The three studies on their own world (3 kinds, 3 questions per entity), pretrained once for all three."""
    runs, tables = tmp_path / "runs", tmp_path / "tables"
    _check_table4(runs, tables)
    _check_table3(runs, tables)
    _check_table5(runs, tables)


def _first_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the first Markdown table (more tables of paired differences follow it)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return _markdown_rows("\n".join(lines[start:end]))


def _entity_of(runs: Path) -> dict[str, str]:
    questions = (runs / WORLD_K3Q3 / "world" / "train_questions.jsonl").read_text().splitlines()
    return {q["id"]: q["entity"] for q in map(json.loads, questions)}


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def _check_table4(runs: Path, tables: Path) -> None:
    proc = _run("table4_scaling.py", runs, tables)
    assert proc.returncode == 0, proc.stderr[-3000:]
    size = json.loads((runs / WORLD_K3Q3 / "world" / "world.json").read_text())["size"]
    assert (size["kinds"], size["questions_per_entity"]) == (3, 3)  # the study's default world
    md, data = (tables / "table4.md").read_text(), json.loads((tables / "table4.json").read_text())
    headers, rows = _first_table(md)
    assert all(c in headers for c in COLUMNS) and data["columns"] == headers[-len(data["columns"]):]
    assert data["seeds"] == [3] and len(rows) == len(data["rows"])
    for row in rows:
        assert all(CELL.match(cell) for cell in row[-len(data["columns"]):]), row
    by_data = {r["data"]: r for r in data["rows"]}
    assert list(by_data) == ["base (no training)", "1/3 by topics", "1/3 by questions", "all pairs (both axes)"]
    every = by_data["all pairs (both axes)"]
    topics_axis, questions_axis = by_data["1/3 by topics"], by_data["1/3 by questions"]
    # equal budgets: a third of the pairs on both axes; the topics axis on fewer topics, the questions axis on all
    assert topics_axis["pairs"] == questions_axis["pairs"] == str(int(every["pairs"]) // 3)
    assert float(topics_axis["topics"]) < float(questions_axis["topics"]) == float(every["topics"])
    # the subsets themselves: whole topics (the last one cut) vs about one question per asked entity
    entity_of, d = _entity_of(runs), runs / WORLD_K3Q3 / "scaling"
    all_pairs = [json.loads(line) for line in (runs / WORLD_K3Q3 / "pairs.jsonl").read_text().splitlines()]
    by_topic = {}
    for p in all_pairs:
        by_topic.setdefault(p["topic"], set()).add(p["id"])
    topics_ids, questions_ids = _ids(d / "topics-1of3.jsonl"), _ids(d / "questions-1of3.jsonl")
    assert len(topics_ids) == len(questions_ids) == len(all_pairs) // 3
    partial = [t for t, ids in by_topic.items() if 0 < len(ids & set(topics_ids)) < len(ids)]
    assert len(partial) <= 1
    assert {entity_of[i] for i in questions_ids} and len({entity_of[i] for i in questions_ids}) == len(questions_ids)
    assert data["sizes"]["3"]["questions-1of3"]["pairs_per_entity"] == 1.0
    assert data["sizes"]["3"]["topics-1of3"]["pairs_per_entity"] > 1.0  # whole entities: all their questions
    # level gap and each axis's step, paired over seeds; one seed gives no interval
    per_seed = data["per_seed"]
    assert set(data["paired"]) == {"gap at 1/3: questions - topics", "topics step full - 1/3",
                                   "questions step full - 1/3"}
    for label, stats in data["paired"].items():
        arm, against = stats["arm"], stats["against"]
        for metric in ("score", "correct_facts", "incorrect_facts", "fact_precision"):
            assert stats[metric]["n"] == 1 and stats[metric]["low"] is None
            assert stats[metric]["mean"] == pytest.approx(per_seed[arm]["3"][metric] - per_seed[against]["3"][metric])
    assert data["paired"]["gap at 1/3: questions - topics"]["arm"] == "questions-1of3"
    assert "65.04" in md and "69.03" in md and "77.53" in md
    paired_rows = [line for line in md.splitlines()
                   if line.startswith(("| gap at", "| topics step", "| questions step"))]
    assert len(paired_rows) == 3
    for line in paired_rows:  # one seed: no interval, so nothing is detected
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert len(cells) == len(data["metrics"]) and all(c.endswith("not detected (underpowered)") for c in cells)
    png = (tables / "table4.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def _check_table3(runs: Path, tables: Path) -> None:
    proc = _run("table3_sampling.py", runs, tables)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = runs / WORLD_K3Q3 / "sampling"
    assert "$ maskdpo world make" not in proc.stderr  # Table 4's world and policy, shared
    # the other policy: the same world, pretrained with seed 3 + 1000
    assert json.loads((d / "other-policy" / "world_pretrain.json").read_text())["seed"] == 1003
    data = json.loads((tables / "table3.json").read_text())
    arms = ["on-policy", "other-policy", "doc"]
    assert data["seeds"] == [3] and list(data["per_seed"]) == ["base", *arms]
    for arm in ["base", *arms]:
        assert 0.0 <= data["per_seed"][arm]["3"]["score"] <= 100.0
    # the three arms train on the same question ids, from the seed's own policy, with the same settings
    ids = {arm: _ids(d / f"pairs.{arm}.jsonl") for arm in arms}
    assert ids["on-policy"] and all(sorted(ids[arm]) == sorted(ids["on-policy"]) for arm in arms)
    assert data["seed_info"]["3"]["pairs"] == len(ids["on-policy"])
    runs_json = {arm: json.loads((d / "runs" / arm / "run.json").read_text()) for arm in arms}
    policy = str((runs / WORLD_K3Q3 / "world" / "policy").resolve())
    assert all(r["model"] == policy and r["use_mask"] for r in runs_json.values())
    assert len({(r["lr"], r["beta"], r["seed"], r["global_batch"]) for r in runs_json.values()}) == 1
    assert len({r["pairs_sha256"] for r in runs_json.values()}) == 3
    # +Doc: sampled with the document in the prompt, trained on the bare question (as on-policy)
    read = lambda path: {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}  # noqa: E731
    doc_samples, bare_samples = read(d / "samples.doc.jsonl"), read(runs / WORLD_K3Q3 / "samples.jsonl")
    on_policy, doc = read(d / "pairs.on-policy.jsonl"), read(d / "pairs.doc.jsonl")
    for qid, p in doc.items():
        sample = doc_samples[qid]
        assert sample["document"] in sample["prompt"][0]["content"]
        assert p["prompt"] == on_policy[qid]["prompt"] == [{"role": "user", "content": p["question"]}]
        assert sample["document"] not in json.dumps(p["prompt"])
        assert p["chosen"][0]["content"] in {r["text"] for r in sample["responses"]}
        assert p["rejected"][0]["content"] in {r["text"] for r in bare_samples[qid]["responses"]}
    other = read(d / "samples.other-policy.jsonl")
    assert any(other[q]["responses"] != bare_samples[q]["responses"] for q in other)  # another model's answers
    for label in ("on-policy - other-policy", "on-policy - doc"):
        diff = data["paired"][label]["score"]
        a, b = label.split(" - ")
        assert diff["mean"] == pytest.approx(data["per_seed"][a]["3"]["score"] - data["per_seed"][b]["3"]["score"])
        assert diff["low"] is None and diff["n"] == 1
    md = (tables / "table3.md").read_text()
    assert "QUICK MODE" in md and "not detected (underpowered)" in md
    png = (tables / "table3.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    # a rerun of either study trains, pretrains and samples nothing new
    for script in ("table4_scaling.py", "table3_sampling.py"):
        proc = _run(script, runs, tables)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "$ maskdpo train" not in proc.stderr and "$ maskdpo world" not in proc.stderr


def test_table4_axes_by_hand():
    """Equal budgets; the topics axis takes whole topics, the questions axis every topic and
    spreads each topic's share over its entities."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import table4_scaling as t4

    # 4 topics of 3 entities with 3 questions each, one entity with a single pair: 34 pairs
    pairs, entity_of = [], {}
    for t in range(4):
        for e in range(3):
            for q in range(1 if (t, e) == (0, 0) else 3):
                qid = f"t{t}-e{e}-q{q}"
                pairs.append({"id": qid, "topic": f"topic{t}"})
                entity_of[qid] = f"t{t}-e{e}"
    for budget in (11, 22):
        by_topics = t4.topics_subset(pairs, budget, seed=5)
        by_questions = t4.questions_subset(pairs, budget, 5, entity_of)
        assert len(by_topics) == len(by_questions) == budget
        assert len({p["topic"] for p in by_questions}) == 4 > len({p["topic"] for p in by_topics})
        assert len({p["id"] for p in by_questions}) == budget  # no pair twice
        for t in range(4):
            counts = {f"t{t}-e{e}": sum(entity_of[p["id"]] == f"t{t}-e{e}" for p in by_questions) for e in range(3)}
            # as even as the pairs allow: an entity holds fewer than another only when it has run out
            assert all(c >= max(counts.values()) - 1 or (e == "t0-e0" and c == 1) for e, c in counts.items())
    # shares add up exactly, in proportion to each topic's pairs, the rest to the largest remainders
    assert t4.shares({"a": 10, "b": 10, "c": 1}, 8, random.Random(0)) == {"a": 4, "b": 4, "c": 0}
    assert t4.topics_subset(pairs, 11, 5) == t4.topics_subset(pairs, 11, 5)  # seeded: the same draw again
