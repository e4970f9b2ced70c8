"""Models named as users name them: a hub id ORG/NAME resolves through huggingface_hub's cache.

No network here: each test fills a hub cache of its own in the layout huggingface_hub
documents (HF_HOME/hub/models--ORG--NAME/snapshots/<commit>/ + refs/main) with the tiny
random Llama, and runs the real commands with HF_HOME pointing at it and HF_HUB_OFFLINE=1.
huggingface_hub reads both when it is imported, so every check runs in a fresh process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(hf_home: Path, repo_id: str, model_dir: Path) -> Path:
    """A model in the hub cache as snapshot_download leaves it; returns the snapshot folder."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def offline_env(hf_home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "1"}


@pytest.fixture()
def hub(tmp_path, tiny_llama_path) -> tuple[Path, Path]:
    hf_home = tmp_path / "hf"
    return hf_home, fill_hub_cache(hf_home, "acme/tiny-llama", tiny_llama_path)


def test_a_hub_id_resolves_to_its_cached_snapshot_for_every_caller(hub):
    hf_home, snapshot = hub
    code = ("from maskdpo_cli.models import resolve_model\n"
            "from maskdpo_cli.clustering import resolve_embedder\n"
            "from maskdpo_cli.backends import make_backend\n"
            "print(resolve_model('acme/tiny-llama'))\n"
            "print(resolve_embedder('acme/tiny-llama', 'x')[0])\n"
            "print(make_backend('transformers', 'acme/tiny-llama').model.name_or_path)\n")
    done = subprocess.run([sys.executable, "-c", code], env=offline_env(hf_home), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(snapshot)] * 3  # --model, --embedder and a judge/sampler backend


def test_masks_takes_a_hub_id_and_a_missing_one_is_a_one_line_exit_2(hub, tmp_path):
    hf_home, _ = hub
    pair = {"id": "p0", "prompt": [{"role": "user", "content": "Who is Alma?"}],
            "chosen": [{"role": "assistant", "content": "Alma lives in Paris. She paints."}],
            "rejected": [{"role": "assistant", "content": "Alma lives in Rome. She paints."}],
            "chosen_item": {"sents": ["Alma lives in Paris.", "She paints."], "type": ["no_hallucination"] * 2},
            "rejected_item": {"sents": ["Alma lives in Rome.", "She paints."],
                              "type": ["hallucination", "no_hallucination"]}}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(pair) + "\n")
    env = offline_env(hf_home)
    done = subprocess.run([*MASKDPO, "masks", str(pairs), "--model", "acme/tiny-llama", "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == "p0"
    missing = subprocess.run([*MASKDPO, "masks", str(pairs), "--model", "acme/not-cached"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stdout == ""
    assert "acme/not-cached" in missing.stderr and "HF_HUB_OFFLINE" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_the_paper_recipe_trains_on_its_own_default_model_from_the_hub_cache(tmp_path, tiny_llama_path):
    """`maskdpo train pairs --recipe recipes/llama3_1_8b_instruct_maskdpo.py --work-dir W`, no --model:
    the recipe names meta-llama/Llama-3.1-8B-Instruct (here the tiny Llama stands in for it)."""
    hf_home = tmp_path / "hf"
    snapshot = fill_hub_cache(hf_home, "meta-llama/Llama-3.1-8B-Instruct", tiny_llama_path)
    pairs = tmp_path / "pairs.jsonl"
    sents = ["Alma lives in Paris.", "She paints."]
    pairs.write_text("".join(json.dumps({
        "id": f"p{i}", "prompt": [{"role": "user", "content": f"Who is Alma {i}?"}],
        "chosen": [{"role": "assistant", "content": " ".join(sents)}],
        "rejected": [{"role": "assistant", "content": "Alma lives in Rome. She paints."}],
        "chosen_item": {"sents": sents, "type": ["no_hallucination"] * 2},
        "rejected_item": {"sents": ["Alma lives in Rome.", "She paints."], "type": ["hallucination", "no_hallucination"]},
    }) + "\n" for i in range(2)))
    work = tmp_path / "W"
    done = subprocess.run([*MASKDPO, "train", str(pairs), "--recipe", str(REPO / "recipes" / "llama3_1_8b_instruct_maskdpo.py"),
                           "--work-dir", str(work), "--gpus", "0", "--batch-size", "2", "--epochs", "1"],
                          env=offline_env(hf_home), capture_output=True, text=True, timeout=400, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((work / "run.json").read_text())["model"] == str(snapshot.resolve())
    assert (work / "hf" / "model.safetensors").is_file()
