"""Peak memory and time of resuming `annotate` over a large judgment file.

    python benchmarks/bench_judgment_resume.py                      # 200,000 judgments (about a minute)
    python benchmarks/bench_judgment_resume.py --judgments 2000000  # paper scale is ~2.5 million

A synthetic OUTPUT.judgments.jsonl is written (anah-v2-like records: key, label, sentence and
the judge's three replies, about 330 bytes a line), then each case runs in a fresh Python
process that imports the judgment cache, does its work, looks up 1,000 keys (half of them
present) and reports its peak RSS (getrusage) and wall time:

  baseline  the import alone: what every case pays before its work
  dict      the previous cache: every judgment read back into a dict of verdicts
  index     JudgmentCache on a file it has never indexed: the whole file indexed into SQLite
            (a first resume after an upgrade, or after the index is deleted)
  resume    JudgmentCache again: the index is up to date, nothing is read but the lookups
  tail      JudgmentCache after 1% more judgments were appended (a resume after a kill -9)

Figures go to stderr as a table, and with --json FILE to a file.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("nofact", "ok", "contradictory", "unverifiable")
REPLIES = ("<Facts Present>", "Paris is the capital of France. <SEP> Berlin is in Germany.", "<No Hallucination>")

CASE = r'''
import json, random, resource, sys, time
sys.path.insert(0, {root!r})
from maskdpo_cli.annotators.judging import JudgmentCache
path, case, n = {path!r}, {case!r}, {n}
start = time.perf_counter()
rng = random.Random(1)
keys = [f"{{rng.randrange(2 * n):064x}}" for _ in range(1000)]
if case == "dict":
    verdicts = {{}}
    with open(path, "rb") as fh:
        for line in fh:
            rec = json.loads(line)
            verdicts[rec["key"]] = {{k: rec[k] for k in ("label", "facts") if k in rec}}
    found = sum(k in verdicts for k in keys)
elif case == "baseline":
    found = 0
else:
    cache = JudgmentCache(path)
    found = sum(cache.get(k) is not None for k in keys)
    cache.close()
seconds = time.perf_counter() - start
print(json.dumps({{"case": case, "found": found, "seconds": seconds,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
'''


def write_judgments(path: Path, start: int, count: int) -> None:
    rng = random.Random(start)
    with open(path, "a", encoding="utf-8") as fh:
        for i in range(start, start + count):
            fh.write(json.dumps({"key": f"{2 * i:064x}", "label": rng.choice(LABELS),
                                 "sentence": f"Item {i} is the river castle by the old harbor.",
                                 "replies": list(REPLIES)}) + "\n")


def run_case(path: Path, case: str, n: int) -> dict:
    code = CASE.format(root=str(ROOT), path=str(path), case=case, n=n)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judgments", type=int, default=200_000)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    n = args.judgments
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.jsonl.judgments.jsonl"
        write_judgments(path, 0, n)
        size_mib = path.stat().st_size / 2**20
        results = [run_case(path, case, n) for case in ("baseline", "dict", "index", "resume")]
        write_judgments(path, n, n // 100)
        results.append(run_case(path, "tail", n + n // 100))
        index_mib = path.with_suffix(".sqlite").stat().st_size / 2**20
    print(f"{n:,} judgments, {size_mib:.0f} MiB of JSONL, index {index_mib:.0f} MiB", file=sys.stderr)
    print(f"{'case':<10}{'peak RSS MiB':>14}{'seconds':>10}{'found':>7}", file=sys.stderr)
    for r in results:
        print(f"{r['case']:<10}{r['peak_rss_mib']:>14.1f}{r['seconds']:>10.2f}{r['found']:>7}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"judgments": n, "jsonl_mib": size_mib, "index_mib": index_mib,
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
