"""Judge throughput of `maskdpo annotate` against served judges, and its peak memory.

    python benchmarks/bench_judge.py                  # throughput, 3 repeats (about 4 minutes)
    python benchmarks/bench_judge.py --rss all        # also peak RSS on a paper-scale file (+25 min)

Throughput: `maskdpo annotate` (the real CLI, in a subprocess, default flags) judges 24
questions x 8 answers x 8 distinct sentences with anah-v2 against
benchmarks/judge_latency_server.py (each answer takes 0.5 s, at most C at once, the rest
queue), in two set-ups:
  one:  one server, C = 128, one --judge-url                 (ceiling 256 calls/s)
  two:  two servers, C = 64 each, two --judge-url            (ceiling 256 calls/s)
The servers count calls/s (first request to last answer). The anchor, alternated with
annotate in every repeat on fresh servers, is a barrier-free client: (default concurrency)
x servers workers sending the same number of requests back to back through OpenAIClient,
i.e. the most this machine can draw from those servers at that moment (it is shared).

Memory (--rss): a generated paper-scale samples file (8,046 questions x 32 answers x 10
sentences), annotated end to end with the world oracle (instant verdicts: the streaming
path without the judge's wait) and the peak RSS of `annotate` measured, next to `pair` on
its output (pair streams); then anah-v2 against a zero-latency server on a prefix of the
same file (the full file is ~6 million judge calls, hours on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from maskdpo_cli.backends.options import DEFAULT_CONCURRENCY

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "benchmarks" / "judge_latency_server.py"
MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]
WORDS = ("river", "castle", "engine", "garden", "harbor", "mountain", "library", "orchestra", "valley", "tower")


def sentence(rng: random.Random, q: int, a: int, s: int, words: int = 6) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"Item {q}-{a}-{s} is the {body}."


def write_samples(path: Path, questions: int, answers: int, sentences: int, words: int = 6) -> Path:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as fh:
        for q in range(questions):
            responses = [{"index": a, "text": " ".join(sentence(rng, q, a, s, words) for s in range(sentences))}
                         for a in range(answers)]
            fh.write(json.dumps({"id": f"q{q}", "question": f"Tell me about item {q}.",
                                 "document": f"Item {q} is a castle by the river.", "responses": responses}) + "\n")
    return path


class Servers:
    """Latency servers in their own processes (one core is left to the client being measured)."""

    def __init__(self, count: int, latency: float, max_concurrent: int) -> None:
        self.procs, self.urls = [], []
        for _ in range(count):
            proc = subprocess.Popen([sys.executable, str(SERVER), "--latency", str(latency),
                                     "--max-concurrent", str(max_concurrent)], stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            self.urls.append(proc.stdout.readline().split()[-1])

    def stats(self) -> dict:
        each = [json.loads(urllib.request.urlopen(u.removesuffix("/v1") + "/stats").read()) for u in self.urls]
        calls = sum(s["calls"] for s in each)
        # Servers run side by side: the span is the longest one (monotonic clocks agree across processes).
        span = max(s["seconds"] for s in each)
        return {"calls": calls, "seconds": span, "calls_per_s": calls / span if span else 0.0,
                "max_held": [s["max_held"] for s in each]}

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait()


def run_annotate(samples: Path, urls: list[str], out: Path, *extra: str) -> float:
    args = [*MASKDPO, "annotate", str(samples)]
    for url in urls:
        args += ["--judge-url", url]
    start = time.monotonic()
    done = subprocess.run([*args, *extra, "-o", str(out)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"annotate failed: {done.stderr[-2000:]}")
    return time.monotonic() - start


ANCHOR = """
import asyncio, sys
from maskdpo_cli.openai_client import OpenAIClient
urls, calls, concurrency = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
async def main():
    client = OpenAIClient(urls, flag="--judge-url", concurrency=concurrency)
    left = iter(range(calls))
    async def worker():
        for i in left:
            await client.chat({"model": "m", "messages": [{"role": "user", "content": f"s{i}"}]})
    await asyncio.gather(*(worker() for _ in range(concurrency * len(urls))))
    await client.aclose()
asyncio.run(main())
"""


def run_anchor(urls: list[str], calls: int, concurrency: int) -> None:
    subprocess.run([sys.executable, "-c", ANCHOR, ",".join(urls), str(calls), str(concurrency)], check=True,
                   cwd=ROOT)


def throughput(work: Path, repeats: int) -> list[dict]:
    samples = write_samples(work / "bench.jsonl", 24, 8, 8)
    setups = [("one", 1, 128), ("two", 2, 64)]
    rows = []
    for name, count, c in setups:
        ceiling = count * c / 0.5
        annotate, anchor = [], []
        calls = None
        for r in range(repeats):
            for kind in (("annotate", "anchor") if r % 2 == 0 else ("anchor", "annotate")):
                with Servers(count, 0.5, c) as servers:
                    if kind == "annotate":
                        out = work / f"out-{name}-{r}.jsonl"
                        for stale in (out, Path(f"{out}.judgments.jsonl")):
                            stale.unlink(missing_ok=True)
                        run_annotate(samples, servers.urls, out)
                        stats = servers.stats()
                        calls = stats["calls"]
                        annotate.append(stats)
                    else:
                        run_anchor(servers.urls, calls or 4000, DEFAULT_CONCURRENCY)
                        anchor.append(servers.stats())
                print(f"  {name} r{r} {kind}: {(annotate if kind == 'annotate' else anchor)[-1]}", file=sys.stderr)
        a = statistics.median(s["calls_per_s"] for s in annotate)
        b = statistics.median(s["calls_per_s"] for s in anchor)
        rows.append({"setup": name, "servers": count, "C": c, "ceiling": ceiling, "calls": calls,
                     "annotate_calls_per_s": a, "anchor_calls_per_s": b,
                     "share_of_ceiling": a / ceiling, "annotate_over_anchor": a / b,
                     "annotate_runs": [round(s["calls_per_s"], 1) for s in annotate],
                     "anchor_runs": [round(s["calls_per_s"], 1) for s in anchor],
                     "max_held": annotate[-1]["max_held"]})
    return rows


def peak_rss_mb(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one child process run to completion."""
    code = ("import resource, subprocess, sys, time; t = time.monotonic(); "
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
            "assert r.returncode == 0, r.stderr[-2000:]; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.monotonic() - t)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"failed: {args}\n{done.stderr[-2000:]}")
    rss, seconds = map(float, done.stdout.split())
    return rss, seconds


def memory(work: Path, parts: str, prefix: int) -> dict:
    big = work / "paper.jsonl"
    if not big.exists():
        write_samples(big, 8046, 32, 10, words=30)
    result = {"file_mb": big.stat().st_size / 2**20}
    if parts in ("all", "world"):
        result.update(memory_world(work, big))
    if parts in ("all", "anah"):
        result.update(memory_anah(work, big, prefix))
    return result


def memory_world(work: Path, big: Path) -> dict:
    from maskdpo_cli.world import make_world

    world = work / "world"
    if not (world / "world.json").exists():
        make_world(7, str(world), quick=True)
    result = {}
    out = work / "paper.annotated.jsonl"
    out.unlink(missing_ok=True)
    result["annotate_world_rss_mb"], result["annotate_world_s"] = peak_rss_mb(
        [*MASKDPO, "annotate", str(big), "--annotator", f"world:{world}", "-o", str(out)])
    result["pair_rss_mb"], result["pair_s"] = peak_rss_mb([*MASKDPO, "pair", str(out), "-o", str(work / "pairs.jsonl")])
    return result


def memory_anah(work: Path, big: Path, prefix: int) -> dict:
    result: dict = {}
    head = work / "paper.prefix.jsonl"
    with open(big, encoding="utf-8") as src, open(head, "w", encoding="utf-8") as dst:
        for _, line in zip(range(prefix), src):
            dst.write(line)
    with Servers(1, 0.0, 1024) as servers:
        out = work / "paper.prefix.annotated.jsonl"
        for stale in (out, Path(f"{out}.judgments.jsonl")):
            stale.unlink(missing_ok=True)
        result["annotate_anah_prefix_questions"] = prefix
        result["annotate_anah_rss_mb"], result["annotate_anah_s"] = peak_rss_mb(
            [*MASKDPO, "annotate", str(head), "--judge-url", servers.urls[0], "-o", str(out)])
        result["annotate_anah_calls"] = servers.stats()["calls"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss", choices=("all", "world", "anah"), default=None,
                        help="also peak RSS on a paper-scale file: world oracle, anah-v2 on a prefix, or both")
    parser.add_argument("--rss-only", action="store_true", help="skip the throughput runs")
    parser.add_argument("--prefix", type=int, default=600,
                        help="questions of the paper-scale file judged by anah-v2 (more than the window)")
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-judge-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    if not args.rss_only:
        report["throughput"] = throughput(work, args.repeats)
    if args.rss:
        report["memory"] = memory(work, args.rss, args.prefix)
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
