"""`transformers serve`: a real OpenAI-compatible server that nobody here wrote, for the tests.

transformers 5 lives in its own directory (the Makefile installs it into
<venv>/transformers-serve; XTuner pins 4.48 in the venv itself) and runs on the venv's python
with PYTHONPATH pointing there, serving the embedded SmolLM2 on the CPU. What it does, as
checked against 5.24 (docs/design.md): it refuses unknown request fields (`top_k`) with HTTP 422
`{"detail": "Unexpected fields in the request: {'top_k'}"}`, fills `usage`, serves only the
model it was started with (its id is the directory, as /v1/models lists it), handles one
request at a time without --continuous-batching, and samples only when the model's
generation_config says do_sample: the embedded SmolLM2's does not, so it answers greedily
whatever the temperature or the seed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SERVE_DIR = Path(sys.prefix) / "transformers-serve"
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served_models(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/models", timeout=5) as answer:
        return [m["id"] for m in json.load(answer)["data"]]


@contextmanager
def transformers_serve(model_dir: Path, log: Path) -> Iterator[str]:
    """Start `transformers serve` on a free port; yield its base URL (http://127.0.0.1:P/v1)."""
    script = SERVE_DIR / "bin" / "transformers"
    assert script.exists(), f"{script} is missing: run `make install` (it installs transformers serve there)"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SERVE_DIR), "OMP_NUM_THREADS": "2"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu", str(model_dir)], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"transformers serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            try:
                served_models(url)
                break
            except OSError:
                assert time.monotonic() < deadline, f"transformers serve did not answer:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
        yield url
    finally:
        proc.kill()
        proc.wait()
