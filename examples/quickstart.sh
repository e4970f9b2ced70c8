#!/usr/bin/env bash
# The data path on the embedded SmolLM2-135M-Instruct: questions -> samples -> annotated -> pairs.
# The judge is any OpenAI-compatible endpoint serving an ANAH-v2 annotator, e.g.
#   lmdeploy serve api_server opencompass/anah-v2 --server-port 23333
# Usage: examples/quickstart.sh QUESTIONS.jsonl JUDGE_URL [OUT_DIR]
set -euo pipefail
questions=${1:?questions JSONL (each with a reference "document")}
judge_url=${2:?judge URL, e.g. http://127.0.0.1:23333/v1}
out=${3:-runs/quickstart}
mkdir -p "$out"

maskdpo sample "$questions" --model smollm2-135m-instruct -n 8 --max-new-tokens 128 -o "$out/samples.jsonl"
maskdpo annotate "$out/samples.jsonl" --annotator anah-v2 --judge-backend openai --judge-url "$judge_url" \
    -o "$out/annotated.jsonl"
maskdpo pair "$out/annotated.jsonl" -o "$out/pairs.jsonl"

# The same as one pipeline (records flow through stdout; progress stays on stderr):
# maskdpo sample "$questions" -n 8 | maskdpo annotate - --judge-url "$judge_url" | maskdpo pair - > pairs.jsonl
