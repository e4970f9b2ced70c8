"""Throughput of `maskdpo sample --backend openai` against served engines (requests/s, server side).

    python benchmarks/bench_sample_served.py              # 3 repeats, about 4 minutes

`maskdpo sample` (the real CLI, in a subprocess, default flags but -n) samples 128 questions
x 32 responses (4,096 requests, one per response) against benchmarks/judge_latency_server.py
(each answer takes 0.5 s, at most C at once, the rest queue, as a continuous-batching engine
at its batch limit), in two set-ups:
  one:  one server, C = 128, one --url                    (ceiling 256 requests/s)
  two:  two servers, C = 64 each, two --url               (ceiling 256 requests/s)
The servers count requests/s from the first request (sample's probe) to the last answer. The
anchor, alternated with sample in every repeat on fresh servers, is bench_judge.py's
barrier-free client: 128 x servers workers sending as many requests back to back through the
same OpenAIClient, i.e. the most this shared machine can draw from those servers right then.
Goal (issue 11): sample >= 90% of the ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_judge import MASKDPO, Servers, run_anchor

from maskdpo_cli.backends.options import DEFAULT_CONCURRENCY

QUESTIONS, RESPONSES, LATENCY = 128, 32, 0.5


def write_questions(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Tell me about item {i}."}) + "\n"
                            for i in range(QUESTIONS)))
    return path


def run_sample(questions: Path, urls: list[str], out: Path) -> float:
    args = [*MASKDPO, "sample", str(questions), "--backend", "openai", "-n", str(RESPONSES)]
    for url in urls:
        args += ["--url", url]
    out.unlink(missing_ok=True)
    start = time.monotonic()
    done = subprocess.run([*args, "-o", str(out)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"sample failed: {done.stderr[-2000:]}")
    return time.monotonic() - start


def throughput(work: Path, repeats: int) -> list[dict]:
    questions = write_questions(work / "questions.jsonl")
    rows = []
    for name, count, c in [("one", 1, 128), ("two", 2, 64)]:
        ceiling = count * c / LATENCY
        runs: dict[str, list[dict]] = {"sample": [], "anchor": []}
        for r in range(repeats):
            for kind in (("sample", "anchor") if r % 2 == 0 else ("anchor", "sample")):
                with Servers(count, LATENCY, c) as servers:
                    if kind == "sample":
                        run_sample(questions, servers.urls, work / f"out-{name}-{r}.jsonl")
                    else:
                        run_anchor(servers.urls, QUESTIONS * RESPONSES + 1, DEFAULT_CONCURRENCY)
                    runs[kind].append(servers.stats())
                print(f"  {name} r{r} {kind}: {runs[kind][-1]}", file=sys.stderr)
        sample = statistics.median(s["calls_per_s"] for s in runs["sample"])
        anchor = statistics.median(s["calls_per_s"] for s in runs["anchor"])
        rows.append({"setup": name, "servers": count, "C": c, "ceiling": ceiling,
                     "requests": runs["sample"][-1]["calls"], "sample_requests_per_s": round(sample, 1),
                     "anchor_requests_per_s": round(anchor, 1), "share_of_ceiling": round(sample / ceiling, 3),
                     "sample_over_anchor": round(sample / anchor, 3),
                     "sample_runs": [round(s["calls_per_s"], 1) for s in runs["sample"]],
                     "anchor_runs": [round(s["calls_per_s"], 1) for s in runs["anchor"]],
                     "max_held": runs["sample"][-1]["max_held"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-sample-served-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"cpus": os.cpu_count(), "load_before": os.getloadavg(),
              "throughput": throughput(work, args.repeats), "load_after": os.getloadavg()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
