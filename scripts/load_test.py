"""Loopback load test of ``captioner serve``: N requests from K concurrent clients; latency percentiles, errors.

Starts its own server (``captioner serve`` on a free 127.0.0.1 port, the default model unless --model) unless --url
is given, waits for /healthz, then each client thread posts one photo per request to /api/caption in turn.
Prints JSON (and writes it with --out). The figures go in docs/performance.md.

Usage: python scripts/load_test.py --requests 200 --concurrency 4 [--url http://127.0.0.1:8000] [--out load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "data" / "samples"


def multipart(path: Path, fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body with one file in ``files`` and the form ``fields``; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
                 "Content-Type: image/jpeg\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str, timeout: float) -> int:
    request = urllib.request.Request(f"{url}/api/caption", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def client(url: str, bodies: list, count: int, timeout: float, out: list, lock: threading.Lock) -> None:
    for i in range(count):
        body, content_type = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        try:
            status = post(url, body, content_type, timeout)
        except OSError as err:
            status = f"{type(err).__name__}"
        with lock:
            out.append((time.perf_counter() - t0, status))


def start_server(model: str, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = "import sys; from captioner.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", command, "serve", "--model", model, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}")
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not answer /healthz within 120 s")


def run(args: argparse.Namespace, url: str) -> dict:
    photos = sorted(Path(p) for p in args.images) if args.images else sorted(SAMPLES.glob("*.jpg"))
    fields = {"beam_size": str(args.beam_size), "max_length": str(args.max_length)}
    bodies = [multipart(p, fields) for p in photos]
    post(url, *bodies[0], timeout=args.timeout)  # warm-up request, not counted
    per_client = [args.requests // args.concurrency + (i < args.requests % args.concurrency)
                  for i in range(args.concurrency)]
    results, lock = [], threading.Lock()
    threads = [threading.Thread(target=client, args=(url, bodies[i % len(bodies):] + bodies[: i % len(bodies)], n,
                                                     args.timeout, results, lock)) for i, n in enumerate(per_client)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    latencies = sorted(s for s, status in results if status == 200)
    errors = {}
    for _, status in results:
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1

    def quantile(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    return {"url": url, "requests": len(results), "concurrency": args.concurrency, "photos": len(photos),
            "beam_size": args.beam_size, "ok": len(latencies), "errors": errors, "wall_s": round(wall, 2),
            "requests_per_s": round(len(results) / wall, 2),
            "latency_ms": {"p50": quantile(0.50), "p95": quantile(0.95), "max": quantile(1.0),
                           "mean": round(1000 * statistics.fmean(latencies), 1)} if latencies else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running server (default: start one on 127.0.0.1)")
    parser.add_argument("--model", default="default", help="model for the server this script starts")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--images", nargs="*", default=None, help="photos to send (default: data/samples/*.jpg)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the started server's threads")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    proc, url = (None, args.url.rstrip("/")) if args.url else start_server(args.model, args.threads)
    try:
        report = run(args, url)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
