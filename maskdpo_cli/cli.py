"""The `maskdpo` command line: each command parses, calls one library function, and prints.

Records go to stdout (or -o FILE); progress, logs and tables go to stderr.
Exit codes: 0 success, 2 bad input or usage, 1 internal failure.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.progress import stderr

app = typer.Typer(
    name="maskdpo",
    help="Fine-grained factuality alignment of LLMs with Mask-DPO: "
         "sample | annotate | pair | train | eval | cluster, over JSONL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

OUTPUT = typer.Option(None, "-o", "--output", help="Output file (default: stdout). '-' is stdout.")


@app.command(epilog="Example: maskdpo sample questions.jsonl --model smollm2-135m-instruct -n 8 -o samples.jsonl")
def sample(
    questions: str = typer.Argument(..., help="Questions JSONL ('-' for stdin)."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="HF directory or embedded alias."),
    n: int = typer.Option(32, "-n", min=1, help="Responses per question (paper: 32)."),
    temperature: float = typer.Option(0.8, min=0.0, help="Sampling temperature; 0 is greedy."),
    top_k: int = typer.Option(40, "--top-k", min=0, help="Top-k sampling; 0 disables it."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same responses."),
    backend: str = typer.Option("transformers", help="transformers (CPU/GPU) or lmdeploy (GPU)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="Sequences decoded together (default: automatic)."),
    output: Optional[str] = OUTPUT,
) -> None:
    """Sample N responses per question; resumes when -o FILE already holds some."""
    from maskdpo_cli.backends import GenerationParams
    from maskdpo_cli.sampling import run_sample

    params = GenerationParams(n=n, temperature=temperature, top_k=top_k, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed)
    summary = run_sample(questions, output, model=model, backend=backend, params=params, batch_size=batch_size)
    stderr.print(f"[green]sampled[/] {summary}")


@app.command(epilog="Example: maskdpo annotate samples.jsonl --annotator anah-v2 --judge-backend openai "
                    "--judge-url http://127.0.0.1:23333/v1 -o annotated.jsonl")
def annotate(
    samples: str = typer.Argument(..., help="Samples JSONL ('-' for stdin)."),
    annotator: str = typer.Option("anah-v2", help="anah-v2, or world:DIR for the embedded world's oracle."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Judge model (HF dir, alias, or the served name)."),
    judge_backend: str = typer.Option("openai", "--judge-backend", help="transformers, lmdeploy or openai."),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:23333/v1"),
    judge_api_key: Optional[str] = typer.Option(None, "--judge-api-key", envvar="MASKDPO_JUDGE_API_KEY"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSON file with your own judge prompt templates."),
    max_retries: int = typer.Option(5, "--max-retries", min=0, help="Retries per judge call."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Parallel requests to the judge endpoint."),
    output: Optional[str] = OUTPUT,
) -> None:
    """Split every response into sentences and label each one for hallucination."""
    from maskdpo_cli.annotation import JudgeConfig, run_annotate

    judge = JudgeConfig(model=judge_model, backend=judge_backend, url=judge_url, api_key=judge_api_key,
                        prompts_file=prompts, max_retries=max_retries, concurrency=concurrency)
    summary = run_annotate(samples, output, annotator=annotator, judge=judge)
    stderr.print(f"[green]annotated[/] {summary}")


@app.command(epilog="Example: maskdpo pair annotated.jsonl -o pairs.jsonl")
def pair(
    annotated: str = typer.Argument(..., help="Annotated samples JSONL ('-' for stdin)."),
    output: Optional[str] = OUTPUT,
) -> None:
    """Build one preference pair per question: most factual response vs least factual."""
    from maskdpo_cli.pairing import DROP_REASONS, run_pair

    stats = run_pair(annotated, output)
    stderr.print(f"[green]{stats.pairs} pairs[/] from {stats.questions} questions")
    for reason, count in sorted(stats.dropped.items()):
        stderr.print(f"  dropped {count}: {DROP_REASONS[reason]} ({reason})")


def main() -> None:
    """Entry point: turns errors into one line and the documented exit codes."""
    try:
        app()  # usage errors are Typer's: a message and exit code 2
    except MaskDPOError as err:
        stderr.print(f"[red]maskdpo: error:[/] {err}", highlight=False, soft_wrap=True)
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
    except Exception as err:  # noqa: BLE001 - the last line of defence for exit code 1
        if os.environ.get("MASKDPO_DEBUG"):
            traceback.print_exc()
        stderr.print(f"[red]maskdpo: internal error:[/] {type(err).__name__}: {err} "
                     "(set MASKDPO_DEBUG=1 for the traceback)", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
