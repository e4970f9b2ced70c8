"""Training throughput: `maskdpo train --no-mask` (XTuner + MaskDPO) against TRL's DPOTrainer.

Same tiny Llama (hidden 256, 4 layers, the SmolLM2 tokenizer), same pairs, same tokens in
the loss (checked), same hyper-parameters (AdamW, constant lr, beta 0.1, grad clip 1.0,
fp32, batch 8, sequential data order), same threads. Each system runs in its own process;
peak RSS is that process's maximum resident set (os.wait4). Runs alternate between the
systems so that load from other processes on the machine hits both alike.

    python benchmarks/bench_train.py                      # 256 pairs, batch 8, 1 epoch, 3 runs each
    python benchmarks/bench_train.py --pairs 64 --runs 1  # a short run

TRL is not a dependency of maskdpo: install the `bench` extra (trl==0.14.0), or point
--trl-path at a directory holding it (pip install --no-deps --target DIR trl==0.14.0).
Prints a Markdown table and writes DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "recipes" / "tiny_cpu_maskdpo.py"

# ----------------------------------------------------------------------------- data

NAMES = ["Aldric Venn", "Mira Solberg", "Toma Quill", "Ines Harrow", "Oskar Lind", "Reva Maro", "Cato Brenn",
         "Lysa Orrin", "Pell Dovan", "Ysolde Marr", "Fenn Astor", "Kira Velt"]
FACTS = ["{n} was born in {y} in the town of {t}.", "{n} studied {f} at the University of {t}.",
         "In {y2}, {n} published a book about {f}.", "{n} worked for many years as a {j} in {t}.",
         "Colleagues remember {n} as patient, exacting and generous.", "{n} received the {t} Prize in {y2}.",
         "Later in life, {n} moved to {t2} and taught {f} there.", "{n} died in {y3} at the age of {a}.",
         "Her most cited work concerns the history of {f} in {t2}.", "{n} also played the cello in a quartet."]
TOWNS = ["Orlen", "Vasse", "Kettering Moor", "Dunmarch", "Saltgrave", "Lowen", "Brisa", "Halden"]
FIELDS = ["botany", "naval history", "glass making", "astronomy", "linguistics", "cartography"]
JOBS = ["surveyor", "librarian", "engineer", "translator", "teacher"]


def _response(rng: random.Random, name: str) -> tuple[str, list[str], list[str]]:
    sents = []
    for template in rng.sample(FACTS, rng.randint(4, 8)):
        y = rng.randint(1850, 1950)
        sents.append(template.format(n=name, y=y, y2=y + rng.randint(20, 40), y3=y + rng.randint(60, 90),
                                     t=rng.choice(TOWNS), t2=rng.choice(TOWNS), f=rng.choice(FIELDS),
                                     j=rng.choice(JOBS), a=rng.randint(60, 90)))
    types = [rng.choice(["no_hallucination", "no_hallucination", "hallucination"]) for _ in sents]
    return " ".join(sents), sents, types


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        name = rng.choice(NAMES)
        chosen, c_sents, c_types = _response(rng, name)
        rejected, r_sents, r_types = _response(rng, name)
        pairs.append({"id": f"bench-{i}", "prompt": [{"role": "user", "content": f"Who was {name}? ({i})"}],
                      "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}],
                      "chosen_item": {"sents": c_sents, "type": c_types},
                      "rejected_item": {"sents": r_sents, "type": r_types}})
    return pairs


def build_model(path: Path) -> None:
    """The tiny policy of the brief's measured baseline: hidden 256, 4 layers, SmolLM2's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from maskdpo_cli.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(str(resolve_model("smollm2-135m-instruct")))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def trl_rows(pairs: list[dict], tokenizer) -> list[dict]:
    """TRL's plain-text format: the templated prompt (with the assistant cue) and the two contents.
    TRL appends the tokenizer's eos (<|im_end|>), i.e. the same end-of-turn token we train on."""
    return [{"prompt": tokenizer.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True),
             "chosen": p["chosen"][-1]["content"], "rejected": p["rejected"][-1]["content"]} for p in pairs]


def check_same_tokens(pairs: list[dict], rows: list[dict], tokenizer) -> int:
    """Pairs whose loss tokens differ between our --no-mask tokenization and TRL's tokenize_row."""
    from maskdpo_cli.masking import tokenize_pair

    mismatched = 0
    for pair, row in zip(pairs, rows):
        ours = tokenize_pair(tokenizer, pair, use_mask=False)
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        for side in ("chosen", "rejected"):
            resp = getattr(ours, side)
            in_loss = [t for t, m in zip(resp.input_ids, resp.loss_mask) if m]
            theirs = tokenizer(row[side], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            if in_loss != theirs or resp.input_ids[:len(prompt_ids)] != prompt_ids:
                mismatched += 1
                break
    return mismatched


# ----------------------------------------------------------------------------- runners

def bench_recipe(out: Path, batch: int) -> Path:
    """The tiny recipe with what makes the two trainers comparable: constant lr, file order,
    the whole batch in one forward (TRL: per_device_train_batch_size, no accumulation)."""
    text = TINY_RECIPE.read_text() + (
        "\n# benchmark: constant lr (TRL lr_scheduler_type='constant'), data in file order, no mid-run saves\n"
        f"train_dataloader['batch_size'] = {batch}\n"
        "param_scheduler = None\n"
        "train_dataloader['sampler']['shuffle'] = False\n"
        "default_hooks['checkpoint']['interval'] = 10**9\n"
        "default_hooks['logger']['interval'] = 10\n"
        "custom_hooks[1]['print_every'] = 8\n")
    path = out / "bench_recipe.py"
    path.write_text(text)
    return path


def run_measured(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS in GB) of one child process."""
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024 / 1024  # KiB on Linux


def run_ours(args, data: Path, model: Path, recipe: Path, work: Path, env: dict) -> dict:
    shutil.rmtree(work, ignore_errors=True)  # a fresh run: reference pass included, no resume
    cmd = [sys.executable, "-m", "maskdpo_cli.cli", "train", str(data), "--model", str(model),
           "--work-dir", str(work), "--recipe", str(recipe), "--no-mask", "--batch-size", str(args.batch),
           "--epochs", str(args.epochs), "--lr", str(args.lr), "--beta", str(args.beta),
           "--max-length", "1024", "--seed", "0"]
    code, wall, rss = run_measured(cmd, env, work.with_suffix(".log"))
    if code:
        raise SystemExit(f"maskdpo train failed ({code}); see {work.with_suffix('.log')}")
    summary = json.loads((work / "train_summary.json").read_text())
    losses = [json.loads(line)["loss"] for line in (work / "train_log.jsonl").read_text().splitlines()]
    pairs = args.pairs * args.epochs
    seconds = summary["train_seconds"] + summary["reference_seconds"]
    return {"pairs_per_s": pairs / seconds, "loop_pairs_per_s": summary["train_pairs_per_s"],
            "reference_seconds": summary["reference_seconds"], "train_seconds": summary["train_seconds"],
            "wall_s": wall, "peak_rss_gb": rss, "losses": losses,
            "cores_busy": summary.get("train_cpu_seconds", 0.0) / summary["train_seconds"]}


def run_trl(args, rows_file: Path, model: Path, out: Path, env: dict, precompute: bool = False,
            tuned: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result = out / "trl_result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(rows_file), "--model", str(model),
           "--worker-out", str(result), "--batch", str(args.batch), "--epochs", str(args.epochs),
           "--lr", str(args.lr), "--beta", str(args.beta)] + (["--precompute-ref"] if precompute else []) + (
               ["--tuned"] if tuned else [])
    code, wall, rss = run_measured(cmd, env, out.with_suffix(".log"))
    if code:
        raise SystemExit(f"TRL run failed ({code}); see {out.with_suffix('.log')}")
    info = json.loads(result.read_text())
    pairs = args.pairs * args.epochs
    return {"pairs_per_s": pairs / info["train_runtime"], "train_seconds": info["train_runtime"],
            "wall_s": wall, "peak_rss_gb": rss, "losses": info["losses"], "step_seconds": info["step_seconds"],
            "cores_busy": info["cpu_seconds"] / info["train_runtime"]}


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def trl_worker(args) -> None:
    """Runs inside its own process: TRL 0.14 DPOTrainer with the benchmark's settings."""
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.times.append(round(now - self.last, 3))
            self.last = now

    class InOrderDPOTrainer(DPOTrainer):
        def _get_train_sampler(self):  # file order, as the maskdpo run
            return SequentialSampler(self.train_dataset)

    if args.tuned:  # the same process-level CPU settings maskdpo applies to itself
        from maskdpo_cli.xtuner_ext.compat import flush_denormals_on_cpu, keep_large_buffers

        flush_denormals_on_cpu()
        keep_large_buffers()
    rows = [json.loads(line) for line in Path(args.trl_worker).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=args.batch, num_train_epochs=args.epochs,
                           learning_rate=args.lr, lr_scheduler_type="constant", warmup_ratio=0.0,
                           weight_decay=0.0, max_grad_norm=1.0, beta=args.beta, loss_type="sigmoid",
                           max_length=1024, max_prompt_length=1024, logging_steps=1, save_strategy="no",
                           report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True,
                           precompute_ref_log_probs=args.precompute_ref,
                           optim="adamw_torch_fused" if args.tuned else "adamw_torch")
        trainer = InOrderDPOTrainer(model=model, ref_model=None, args=config,
                                    train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        steps = StepTimes()
        trainer.add_callback(steps)
        steps.last = time.perf_counter()
        cpu0 = _cpu_seconds()
        output = trainer.train()
        cpu_seconds = _cpu_seconds() - cpu0
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    Path(args.worker_out).write_text(json.dumps({"train_runtime": output.metrics["train_runtime"],
                                                 "losses": losses, "step_seconds": steps.times,
                                                 "cpu_seconds": cpu_seconds, "threads": torch.get_num_threads()}))


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=3, help="runs per system (medians are reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trl-path", help="directory holding trl, added to the TRL run's PYTHONPATH")
    parser.add_argument("--trl-precomputed", action="store_true",
                        help="also run TRL with precompute_ref_log_probs=True")
    parser.add_argument("--trl-tuned", action="store_true",
                        help="also run TRL with maskdpo's CPU settings (flush denormals, keep large buffers, "
                             "fused AdamW)")
    parser.add_argument("--out", type=Path, help="work dir (default: a new temporary one)")
    # worker mode (internal)
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--precompute-ref", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(args)
        return

    from maskdpo_cli.models import load_tokenizer

    out = args.out or Path(tempfile.mkdtemp(prefix="maskdpo-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    model = out / "tiny-llama"
    if not (model / "config.json").is_file():
        build_model(model)
    tokenizer = load_tokenizer(str(model))
    pairs = make_pairs(args.pairs)
    data = out / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    rows = trl_rows(pairs, tokenizer)
    rows_file = out / "trl_rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mismatched = check_same_tokens(pairs, rows, tokenizer)
    recipe = bench_recipe(out, args.batch)

    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(REPO)}
    trl_env = dict(env)
    if args.trl_path:
        trl_env["PYTHONPATH"] = f"{args.trl_path}{os.pathsep}{REPO}"

    results: dict[str, list[dict]] = {"maskdpo": [], "trl": []}
    if args.trl_precomputed:
        results["trl_precomputed"] = []
    if args.trl_tuned:
        results["trl_tuned"] = []
    for i in range(args.runs):
        results["maskdpo"].append(run_ours(args, data, model, recipe, out / f"maskdpo-{i}", env))
        results["trl"].append(run_trl(args, rows_file, model, out / f"trl-{i}", trl_env))
        if args.trl_precomputed:
            results["trl_precomputed"].append(run_trl(args, rows_file, model, out / f"trlpre-{i}", trl_env,
                                                      precompute=True))
        if args.trl_tuned:
            results["trl_tuned"].append(run_trl(args, rows_file, model, out / f"trltuned-{i}", trl_env, tuned=True))
        print(f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]['pairs_per_s']:.2f} pairs/s"
                                                         for k, v in results.items()), file=sys.stderr)

    def median(system: str, key: str) -> float:
        return statistics.median(r[key] for r in results[system])

    ours_losses, trl_losses = results["maskdpo"][0]["losses"], results["trl"][0]["losses"]
    steps = min(len(ours_losses), len(trl_losses))
    max_diff = max(abs(a - b) for a, b in zip(ours_losses[:steps], trl_losses[:steps]))
    summary = {
        "settings": {k: getattr(args, k) for k in ("pairs", "batch", "epochs", "lr", "beta", "runs", "threads")},
        "pairs_with_different_loss_tokens": mismatched,
        "median_pairs_per_s": {k: median(k, "pairs_per_s") for k in results},
        "median_peak_rss_gb": {k: median(k, "peak_rss_gb") for k in results},
        "maskdpo_loop_pairs_per_s": median("maskdpo", "loop_pairs_per_s"),
        "maskdpo_reference_seconds": median("maskdpo", "reference_seconds"),
        "speedup_vs_trl": median("maskdpo", "pairs_per_s") / median("trl", "pairs_per_s"),
        "loss_curve_max_abs_diff": max_diff, "loss_steps_compared": steps,
        "loss_first_last": {"maskdpo": [ours_losses[0], ours_losses[-1]], "trl": [trl_losses[0], trl_losses[-1]]},
        "runs": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))

    print(f"| system | pairs/s (median of {args.runs}) | peak RSS | cores busy while training |")
    print("|---|---|---|---|")
    for k in results:
        print(f"| {k} | {summary['median_pairs_per_s'][k]:.2f} | {summary['median_peak_rss_gb'][k]:.2f} GB "
              f"| {median(k, 'cores_busy'):.2f} |")
    print(f"\nmaskdpo/TRL: {summary['speedup_vs_trl']:.2f}x; maskdpo training loop alone "
          f"{summary['maskdpo_loop_pairs_per_s']:.2f} pairs/s, reference pass "
          f"{summary['maskdpo_reference_seconds']:.1f} s; loss curves: max |diff| {max_diff:.2e} over {steps} steps; "
          f"pairs with different loss tokens: {mismatched}; results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
