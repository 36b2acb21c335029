"""Issue 26 item 2: a server that slow or idle clients cannot tie up. Real sockets against a server on 127.0.0.1 (a
thread of this process, or ``captioner serve`` in a subprocess for signals and a lowered open-file limit), with small
timeouts so that each test takes seconds."""

import contextlib
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from captioner.serving.connections import server_config  # noqa: E402
from captioner.serving.server import create_app  # noqa: E402
from captioner.serving.settings import ServeSettings, hosts_for  # noqa: E402

HEAD = b"POST /api/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def threaded_server(model, **limits):
    """``create_app`` + the uvicorn configuration of ``captioner serve`` on a free port, in a thread; yields the port."""
    settings = ServeSettings(allowed_hosts=hosts_for("127.0.0.1"), **{"shutdown_timeout": 1, **limits})
    port = free_port()
    app = create_app(model, settings=settings, warm_up=False)  # these tests caption nothing
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def until_closed(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after ``within`` s."""
    sock.settimeout(within)
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the connection is still open after {within} s (received {received[:80]!r})")


def healthz(port: int, timeout: float = 5) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as response:
        return response.status


def test_connections_that_send_nothing_or_half_their_headers_are_closed(tiny_model):
    """They stayed open for more than 90 s; now each has header_timeout to complete its request head, even one
    that keeps trickling header bytes (slowloris)."""
    with threaded_server(tiny_model, header_timeout=0.5) as port:
        silent, half, trickle = connect(port), connect(port), connect(port)  # the server closes them
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t0 = time.monotonic()
        for _ in range(15):  # a header byte every 0.1 s: the deadline is for the whole head
            try:
                trickle.sendall(b"X")
            except OSError:
                break
            time.sleep(0.1)
        for sock in (silent, half, trickle):
            until_closed(sock, within=2.0)
        assert time.monotonic() - t0 < 2.5
        assert healthz(port) == 200  # a client that sends its request at once is served


def test_a_body_that_stalls_gets_408_and_its_connection_closed(tiny_model):
    """Content-Length 1000 and 5 bytes sent: the request waited for ever; now 408 after body_timeout, and a body
    trickled byte by byte (below the minimum rate) is cut off the same way."""
    with threaded_server(tiny_model, body_timeout=0.5) as port:
        stalled = connect(port)
        stalled.sendall(HEAD + b"Content-Length: 1000\r\n\r\n--x\r\n")
        t0 = time.monotonic()
        answer = until_closed(stalled, within=3.0)
        assert answer.startswith(b"HTTP/1.1 408") and b"body-timeout" in answer
        assert time.monotonic() - t0 < 2.0
        trickle = connect(port)
        trickle.sendall(HEAD + b"Content-Length: 100000\r\n\r\n")
        for _ in range(20):
            try:
                trickle.sendall(b"-")
            except OSError:
                break
            time.sleep(0.1)
        assert until_closed(trickle, within=3.0).startswith(b"HTTP/1.1 408")
        assert healthz(port) == 200


def test_idle_connections_do_not_starve_healthz_and_busy_ones_get_503(tiny_model):
    """At the connection cap a new connection closes the longest-idle one; when every connection is busy (a body
    still arriving), it is answered 503 at once."""
    with threaded_server(tiny_model, max_connections=8, header_timeout=30, body_timeout=30) as port:
        idle = [connect(port) for _ in range(40)]
        assert healthz(port) == 200
        closed = 0
        for sock in idle:
            sock.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                closed += sock.recv(1) == b""
        assert closed >= 40 - 8
        busy = [connect(port) for _ in range(8)]
        for sock in busy:
            sock.sendall(HEAD + b"Content-Length: 1000\r\n\r\n--x")
        time.sleep(0.3)
        refused = until_closed(connect(port), within=2.0)
        assert refused.startswith(b"HTTP/1.1 503") and b"too many connections" in refused
        for sock in idle + busy:
            sock.close()


def test_responses_carry_no_server_header(tiny_model):
    """Issue 26 item 8: every answer said 'server: uvicorn'."""
    with threaded_server(tiny_model) as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200 and response.headers.get("server") is None


def test_connections_and_accept_bursts_are_fitted_to_the_open_file_limit():
    from captioner.cli.serve import ACCEPT_BURSTS, fit_open_files

    assert fit_open_files(ServeSettings(), room=2**31) == ServeSettings()
    for room in (96, 960, 5000):
        fitted = fit_open_files(ServeSettings(), room)
        assert fitted.max_connections + ACCEPT_BURSTS * fitted.backlog <= room and fitted.backlog >= 1
    assert fit_open_files(ServeSettings(), 960).max_connections == 100  # the default fits the usual 1024
    assert fit_open_files(ServeSettings(), 96).max_connections == 48


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@contextlib.contextmanager
def cli_server(model_dir, *options, open_files: int | None = None):
    """``captioner serve`` in a subprocess (optionally with a lowered open-file limit); yields (process, port,
    its stderr file)."""
    def lower_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    port = free_port()
    command = [sys.executable, "-m", "captioner", "serve", "--model", str(model_dir), "--port", str(port),
               "--device", "cpu", *options]
    log = model_dir.parent / "serve.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                preexec_fn=lower_limit if open_files else None)
    try:
        deadline = time.time() + 90
        while True:
            with contextlib.suppress(OSError):
                if healthz(port, timeout=1) == 200:
                    break
            assert proc.poll() is None, log.read_text()
            assert time.time() < deadline, "captioner serve did not answer /healthz"
            time.sleep(0.2)
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_a_low_open_file_limit_and_sigterm_during_a_stalled_upload(model_dir):
    """Two findings on one ``captioner serve`` process (it takes seconds to start): 320 idle connections at a
    lowered open-file limit made /healthz time out ('Too many open files'); and with a client that declared
    Content-Length 1000 and sent 5 bytes, the server stayed alive 40 s after SIGTERM. Now the connections and the
    accept backlog fit the limit, and a graceful shutdown waits --shutdown-timeout at most."""
    options = ("--max-connections", "32", "--header-timeout", "60", "--body-timeout", "120", "--shutdown-timeout", "1")
    with cli_server(model_dir, *options, open_files=160) as (proc, port, log), contextlib.ExitStack() as sockets:
        idle = [sockets.enter_context(connect(port)) for _ in range(320)]
        t0 = time.monotonic()
        assert healthz(port, timeout=5) == 200
        assert time.monotonic() - t0 < 3
        assert len(idle) == 320
        stalled = sockets.enter_context(connect(port))
        stalled.sendall(HEAD + b"Content-Length: 1000\r\n\r\n--x\r\n")
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.monotonic() - t0 < 1 + 3
        assert "Too many open files" not in log.read_text()
