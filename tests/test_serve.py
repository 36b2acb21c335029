import struct
import threading
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from captioner.cli.main import main  # noqa: E402
from captioner.serving.batcher import Batcher, QueueFull
from captioner.serving.server import create_app

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def _files(*names):
    return [("files", (name, (SAMPLES / name).read_bytes(), "image/jpeg")) for name in names]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb: Pillow refuses it on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


@pytest.fixture
def client(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    with TestClient(create_app(tiny_model, tmp_path / "m", max_upload_mb=1)) as test_client:
        yield test_client


def test_caption_returns_each_photo_with_its_n_best(client):
    response = client.post("/api/caption", files=_files("coffee.jpg", "rocket.jpg"),
                           data={"beam_size": "3", "max_length": "8"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["coffee.jpg", "rocket.jpg"]
    for result in results:
        assert len(result["beams"]) == 3 and result["caption"] == result["beams"][0]["caption"]
        scores = [b["log_prob"] for b in result["beams"]]
        assert scores == sorted(scores, reverse=True) and result["ms"] > 0
    greedy = client.post("/api/caption", files=_files("coffee.jpg"), data={"beam_size": "1"}).json()["results"][0]
    assert len(greedy["beams"]) == 1


def test_bad_files_are_named_with_400_and_the_others_still_captioned(client):
    good = (SAMPLES / "coffee.jpg").read_bytes()
    files = _files("coffee.jpg") + [
        ("files", ("notes.jpg", b"just text", "image/jpeg")),
        ("files", ("empty.png", b"", "image/png")),
        ("files", ("cut.jpg", good[: len(good) // 3], "image/jpeg")),
        ("files", ("bomb.png", _png_header(30000, 30000), "image/png")),
    ]
    response = client.post("/api/caption", files=files)
    assert response.status_code == 400
    body = response.json()
    assert [r["filename"] for r in body["results"]] == ["coffee.jpg"]
    errors = {e["filename"]: e["error"] for e in body["errors"]}
    assert set(errors) == {"notes.jpg", "empty.png", "cut.jpg", "bomb.png"}
    assert "decompression-bomb" in errors["bomb.png"] and "0 bytes" in errors["empty.png"]
    assert "4 of 5 files" in body["detail"] and "bomb.png" in body["detail"]


def test_limits_413_too_many_files_and_bad_options(client):
    big = [("files", ("big.jpg", b"\xff" * (1024 * 1024 + 10), "image/jpeg"))]
    response = client.post("/api/caption", files=big)
    assert response.status_code == 413 and "1 MB" in response.json()["detail"]
    many = [("files", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(33)]
    assert client.post("/api/caption", files=many).status_code == 400
    assert client.post("/api/caption", files=_files("coffee.jpg"), data={"beam_size": "0"}).status_code == 422
    assert client.post("/api/caption", files=_files("coffee.jpg"), data={"max_length": "x"}).status_code == 422
    assert client.post("/api/caption").status_code == 422  # no files


def test_a_full_queue_answers_503(client, monkeypatch):
    def busy(images, config):
        raise QueueFull("the server is busy (16 requests waiting); retry shortly")

    monkeypatch.setattr(client.app.state.batcher, "submit", busy)
    response = client.post("/api/caption", files=_files("coffee.jpg"))
    assert response.status_code == 503 and "busy" in response.json()["detail"]
    assert response.headers["retry-after"] == "1"


def test_pages_health_model_facts_and_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    facts = client.get("/api/model").json()
    assert facts["vocab_size"] > 4 and facts["encoder"] == "efficientnet_lite0" and isinstance(facts["card"], list)
    page = client.get("/")
    assert page.status_code == 200 and "Drop photos" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert "/api/caption" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_batcher_bounds_its_queue_and_batches_what_waits_together():
    release, calls = threading.Event(), []

    def caption(images, config):
        calls.append(list(images))
        release.wait(5)
        return [f"caption of {image}" for image in images]

    batcher = Batcher(caption, max_queue=2, max_batch=8)
    batcher.start()
    first = batcher.submit(["a"], "greedy")
    deadline = time.time() + 5
    while not calls and time.time() < deadline:  # the worker has taken the first request
        time.sleep(0.01)
    waiting = [batcher.submit(["b", "c"], "greedy"), batcher.submit(["d"], "greedy")]
    with pytest.raises(QueueFull):
        batcher.submit(["e"], "greedy")
    release.set()
    assert first.result(5)[0] == ["caption of a"]
    assert waiting[0].result(5)[0] == ["caption of b", "caption of c"] and waiting[1].result(5)[0] == ["caption of d"]
    assert calls == [["a"], ["b", "c", "d"]]  # the two waiting requests went through the model together
    batcher.stop()


def test_batcher_keeps_running_after_a_failed_batch():
    def caption(images, config):
        if images == ["boom"]:
            raise RuntimeError("model failure")
        return list(images)

    batcher = Batcher(caption)
    batcher.start()
    with pytest.raises(RuntimeError):
        batcher.submit(["boom"], None).result(5)
    assert batcher.submit(["fine"], None).result(5)[0] == ["fine"]
    batcher.stop()


def test_cli_refuses_a_busy_port_and_bad_options(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: cannot listen on 127.0.0.1") and err.count("\n") == 1
    assert main(["serve", "--max-upload-mb", "0"]) == 2
    assert main(["serve", "--port", "70000"]) == 1
    assert main(["serve", "--model", str(tmp_path / "none"), "--port", str(port)]) == 1
    assert "cannot load model" in capsys.readouterr().err
