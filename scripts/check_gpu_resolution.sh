#!/usr/bin/env bash
# Does the GPU extra still resolve into one environment? pip's dry run, nothing installed.
#
# `pip install -e '.[gpu]'` must give XTuner 0.2.0, transformers 4.48.0 and LMDeploy 0.9.2
# together (torch<=2.7.1, numpy<2). That breaks silently when a base dependency pins a newer
# torch (issue 11), so CI resolves the extra, and '.[gpu,deepspeed]' when that extra exists.
#
# The resolver runs in its own small venv (kept in .venv/gpu-check, rebuilt with the venv)
# with a recent pip: --use-feature=fast-deps reads each wheel's metadata through HTTP range
# requests, where a plain dry run downloads every wheel (2.5 GB of torch and CUDA: minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CHECK_VENV=${CHECK_VENV:-.venv/gpu-check}
PIP_VERSION=26.3

if [ "$("$CHECK_VENV/bin/pip" --version 2>/dev/null | cut -d' ' -f2)" != "$PIP_VERSION" ]; then
    rm -rf "$CHECK_VENV"
    "$PYTHON" -m venv "$CHECK_VENV"
    "$CHECK_VENV/bin/pip" install --quiet "pip==$PIP_VERSION" 'setuptools>=68'
fi

extras=(gpu)
if grep -Eq '^deepspeed *=' pyproject.toml; then
    extras+=(gpu,deepspeed)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for extra in "${extras[@]}"; do
    start=$(date +%s)
    if ! "$CHECK_VENV/bin/pip" install --dry-run --ignore-installed --no-build-isolation \
            --use-feature=fast-deps --quiet --report "$work/report.json" ".[$extra]" >"$work/log" 2>&1; then
        cat "$work/log" >&2
        echo "check_gpu_resolution: '.[$extra]' does not resolve (pip's dry run above)" >&2
        exit 1
    fi
    # The resolution must be the documented GPU stack, not merely some resolution.
    "$CHECK_VENV/bin/python" - "$work/report.json" "$extra" "$(($(date +%s) - start))" <<'PY'
import json, sys

report, extra, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
got = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.load(open(report))["install"]}
want = {"xtuner": "0.2.0", "transformers": "4.48.0", "lmdeploy": "0.9.2"}
wrong = {name: got.get(name) for name, version in want.items() if got.get(name) != version}
major, minor = (int(part) for part in got["torch"].split(".")[:2])
if wrong or (major, minor) > (2, 7) or int(got["numpy"].split(".")[0]) >= 2:
    sys.exit(f"check_gpu_resolution: '.[{extra}]' resolved to an unexpected stack: {wrong or got}")
shown = ", ".join(f"{name} {got[name]}" for name in ("torch", "numpy", "xtuner", "transformers", "lmdeploy", "deepspeed")
                  if name in got)
print(f"check_gpu_resolution: '.[{extra}]' resolves: {shown} ({seconds} s)")
PY
done
