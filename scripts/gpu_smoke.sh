#!/usr/bin/env bash
# GPU smoke test: sample with LMDeploy and train Mask-DPO with XTuner in bf16 on the embedded
# SmolLM2-135M-Instruct, on one CUDA GPU; prints sampling tokens/s and training pairs/s, tokens/s.
#
#   pip install -e '.[gpu]'        # lmdeploy (GPU inference backend)
#   scripts/gpu_smoke.sh [OUT_DIR] [QUESTIONS]
#
# Pairs are built from the samples with seeded random sentence labels: this measures the
# machinery (LMDeploy sampling, masked XTuner training in bf16, export), not factuality.
set -euo pipefail
out=${1:-runs/gpu_smoke}
questions=${2:-}
py=${PYTHON:-python}
mkdir -p "$out"

"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible: this script needs one")'
"$py" -c 'import lmdeploy' 2>/dev/null || { echo "lmdeploy is not installed: pip install -e '.[gpu]'" >&2; exit 2; }

if [[ -z "$questions" ]]; then  # the embedded world's training questions
    questions="$out/questions.jsonl"
    "$py" - "$out" <<'PY'
import json, shutil, sys
from pathlib import Path
from maskdpo_cli.world.generator import make_world
out = Path(sys.argv[1])
make_world(0, str(out / "world"), n_topics=8, entities_per_topic=8)
shutil.copy(out / "world" / "train_questions.jsonl", out / "questions.jsonl")
PY
fi

echo "== sampling with LMDeploy" >&2
"$py" -m maskdpo_cli.cli sample "$questions" --model smollm2-135m-instruct --backend lmdeploy \
    -n 8 --max-new-tokens 256 --seed 0 -o "$out/samples.jsonl" 2> >(tee "$out/sample.log" >&2)

echo "== pairs from the samples (random sentence labels)" >&2
"$py" - "$out/samples.jsonl" "$out/pairs.jsonl" <<'PY'
import json, random, sys
from maskdpo_cli.segmentation import split_sentences
rng = random.Random(0)
pairs = []
for line in open(sys.argv[1]):
    rec = json.loads(line)
    texts = [r["text"] for r in rec["responses"] if split_sentences(r["text"])]
    if len(texts) < 2:
        continue
    sides = {}
    for side, text in zip(("chosen", "rejected"), rng.sample(texts, 2)):
        sents = split_sentences(text)
        sides[side] = [{"role": "assistant", "content": text}]
        sides[f"{side}_item"] = {"sents": [s.text for s in sents], "spans": [[s.start, s.end] for s in sents],
                                 "type": [rng.choice(["no_hallucination", "hallucination"]) for _ in sents]}
    pairs.append({"id": rec["id"], "prompt": rec.get("prompt") or [{"role": "user", "content": rec["question"]}],
                  **sides})
with open(sys.argv[2], "w") as fh:
    fh.writelines(json.dumps(p) + "\n" for p in pairs)
print(f"{len(pairs)} pairs", file=sys.stderr)
PY

echo "== training with XTuner, bf16 (AmpOptimWrapper), 1 GPU" >&2
rm -rf "$out/train"
"$py" -m maskdpo_cli.cli train "$out/pairs.jsonl" --model smollm2-135m-instruct --work-dir "$out/train" \
    --epochs 1 --batch-size 16 --gpus 1

"$py" - "$out" <<'PY'
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
sampled = re.search(r"([\d.]+) tokens/s", (out / "sample.log").read_text())
summary = json.loads((out / "train" / "train_summary.json").read_text())
print(f"sampling (LMDeploy): {sampled.group(1) if sampled else '?'} tokens/s")
print(f"training (XTuner bf16): {summary['train_pairs_per_s']} pairs/s, {summary['train_tokens_per_s']} tokens/s, "
      f"reference pass {summary['reference_seconds']:.1f} s")
PY
"$py" -c "
import sys, torch
from maskdpo_cli.models import load_causal_lm, load_tokenizer, chat_prompt_text
p = sys.argv[1]; tok = load_tokenizer(p); m = load_causal_lm(p, device='cuda')
ids = tok(chat_prompt_text(tok, [{'role': 'user', 'content': 'Who was Ada Lovelace?'}]), return_tensors='pt', add_special_tokens=False).to('cuda')
print('exported model says:', tok.decode(m.generate(**ids, max_new_tokens=40, do_sample=False)[0, ids['input_ids'].shape[1]:], skip_special_tokens=True))
" "$out/train/hf"
