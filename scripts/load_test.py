"""Loopback load test of ``captioner serve``: N requests from K concurrent clients; latency percentiles, errors.

Starts its own server (``captioner serve`` on a free 127.0.0.1 port, the default model unless --model) unless --url
is given, waits for /healthz, then each client thread posts one photo per request to /api/caption in turn.
Prints JSON (and writes it with --out). The figures go in docs/performance.md. ``--backend both`` runs the test
against a server of each backend in turn (the default, ONNX Runtime on the CPU, then ``--backend torch``) and reports
requests/s and latency percentiles for each.

With --huge N [N ...], it measures memory instead: for each N, a fresh server gets one request with N copies of a
9000x9000 PNG (about 240 KB each, 81 million pixels decoded), and the server process's peak and resident memory
(VmHWM, VmRSS from /proc/PID/status) are reported before and after; the figures go in docs/reliability.md.

Usage: python scripts/load_test.py --requests 200 --concurrency 4 [--url http://127.0.0.1:8000] [--out load.json]
       python scripts/load_test.py --requests 200 --concurrency 16 --backend both [--out load_c16.json]
       python scripts/load_test.py --huge 1 8 32 [--serve-arg=--max-request-megapixels=1000]
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
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "data" / "samples"


def multipart(path: Path, fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body with one file in ``files`` and the form ``fields``; returns (body, content type)."""
    return multipart_files([(path.name, path.read_bytes())], fields)


def multipart_files(files: list[tuple[str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body with ``files`` ``[(name, content)]`` in the field ``files`` and the form
    ``fields``; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    for name, content in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def huge_png(side: int = 9000) -> bytes:
    """A black side x side RGB PNG, written row by row (the client never holds the pixels): 81 million pixels in
    about 240 KB for the default side."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    packer, row = zlib.compressobj(9), b"\0" * (1 + 3 * side)  # filter byte + RGB
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def memory_kb(pid: int) -> dict[str, int]:
    """The process's peak and resident memory in KB (VmHWM, VmRSS of /proc/PID/status; Linux)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmHWM", "VmRSS")}


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


def start_server(model: str, threads: int, extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = "import sys; from captioner.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", command, "serve", "--model", model, "--port", str(port), *extra],
                            env=env, stdout=subprocess.DEVNULL)
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


def memory_run(args: argparse.Namespace, count: int) -> dict:
    """One request with ``count`` huge PNGs to a fresh server; its memory (MB) before, at peak and after."""
    proc, url = start_server(args.model, args.threads, args.serve_arg)
    try:
        post(url, *multipart(sorted(SAMPLES.glob("*.jpg"))[0], {}), timeout=args.timeout)  # warm-up
        before = memory_kb(proc.pid)
        body, content_type = multipart_files([(f"huge{i}.png", huge_png()) for i in range(count)],
                                             {"beam_size": "1", "max_length": "5"})
        request = urllib.request.Request(f"{url}/api/caption", data=body, headers={"Content-Type": content_type})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as response:
                status, answer = response.status, json.load(response)
        except urllib.error.HTTPError as err:
            status, answer = err.code, json.load(err)
        seconds = time.perf_counter() - t0
        time.sleep(2)  # what the server keeps once the request is done
        after = memory_kb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"files": count, "upload_kb": len(body) // 1024, "status": status,
            "captioned": len(answer.get("results", [])), "refused": len(answer.get("errors", [])),
            "seconds": round(seconds, 2), "rss_mb_before": before["VmRSS"] // 1024,
            "peak_rss_mb": after["VmHWM"] // 1024, "rss_mb_after": after["VmRSS"] // 1024,
            "serve_args": args.serve_arg}


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
    parser.add_argument("--huge", type=int, nargs="+", default=None, metavar="N",
                        help="measure memory instead: one request with N 9000x9000 PNGs per fresh server")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="an option for the started server (repeat; e.g. --serve-arg=--max-batch=8)")
    parser.add_argument("--backend", choices=["auto", "onnxruntime", "torch", "both"], default="auto",
                        help="the started server's backend (auto: the default, no --backend option; both: auto "
                        "then torch, one server each) (default: auto)")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    if args.huge:
        if args.url:
            parser.error("--huge starts its own servers (it reads their memory): leave out --url")
        text = json.dumps([memory_run(args, count) for count in args.huge], indent=2)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return 0
    if args.url and args.backend == "both":
        parser.error("--backend both starts its own servers: leave out --url")
    backends = ["auto", "torch"] if args.backend == "both" else [args.backend]
    reports = {backend: run_backend(args, backend) for backend in backends}
    report = reports[backends[0]] if len(backends) == 1 else {
        "concurrency": args.concurrency, "requests": args.requests, "backends": reports,
        "summary": {b: {"requests_per_s": rep["requests_per_s"],
                        "p95_ms": (rep["latency_ms"] or {}).get("p95")} for b, rep in reports.items()}}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if not any(rep["errors"] for rep in reports.values()) else 1


def run_backend(args: argparse.Namespace, backend: str) -> dict:
    """The load test against ``--url``, or against a server of ``backend`` started for it (``auto``: no
    ``--backend`` option, the default a user gets)."""
    extra = ([] if backend == "auto" else ["--backend", backend]) + args.serve_arg
    proc, url = (None, args.url.rstrip("/")) if args.url else start_server(args.model, args.threads, extra)
    try:
        report = run(args, url)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    return {"backend": backend if not args.url else "the server's", **report}


if __name__ == "__main__":
    sys.exit(main())
