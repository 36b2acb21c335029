"""Issue 26 item 8: what the server exposes. /api/model without local paths or training commands; a Host allow-list
(DNS rebinding); no CORS by default and cross-origin POSTs refused; IPv6 URLs in brackets. (No ``server`` header:
tests/test_serve_connections.py, on a real socket.)"""

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from captioner.cli.main import main  # noqa: E402
from captioner.serving.settings import hosts_for, url_for  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
BASE = "http://127.0.0.1:8000"


@pytest.fixture
def app(tiny_model):
    from captioner.serving.server import create_app

    return create_app(tiny_model, warm_up=False, allowed_hosts=hosts_for("127.0.0.1"))


def upload():
    return [("files", ("coffee.jpg", (SAMPLES / "coffee.jpg").read_bytes(), "image/jpeg"))]


def test_api_model_names_no_local_path_and_no_training_command(tiny_model, tmp_path):
    """It returned the absolute install path and the training command (``--data ../shared/...``)."""
    from captioner.serving.server import create_app

    model_dir = tmp_path / "secret place" / "my-model"
    tiny_model.save_pretrained(model_dir)
    shipped = (REPO / "captioner" / "pretrained" / "default" / "README.md").read_text(encoding="utf-8")
    (model_dir / "README.md").write_text(shipped, encoding="utf-8")  # a card with a Command: line
    with TestClient(create_app(tiny_model, model_dir, warm_up=False)) as client:
        text = client.get("/api/model").text
        facts = client.get("/api/model").json()
    assert str(tmp_path) not in text and "secret place" not in text
    assert "train --data" not in text and "shared/data" not in text and "Command" not in text
    assert facts["model"] == "my-model"
    assert any(line.startswith("Encoder:") for line in facts["card"])


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "127.0.0.1", "localhost:8000", "LOCALHOST", "[::1]:8000",
                                  "[::1]"])
def test_loopback_host_names_are_answered(app, host):
    with TestClient(app, base_url=BASE) as client:
        assert client.get("/healthz", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["attacker.example:8000", "attacker.example", "127.0.0.1.attacker.example", "",
                                  "[::2]:8000"])
def test_other_host_names_get_400(app, host):
    """Any Host was accepted: a DNS-rebinding page (attacker.example resolved to 127.0.0.1) could read the API."""
    with TestClient(app, base_url=BASE) as client:
        response = client.get("/api/model", headers={"host": host})
        assert response.status_code == 400 and "--allowed-host" in response.json()["detail"]
        assert client.post("/api/caption", files=upload(), headers={"host": host}).status_code == 400


def test_the_allow_list_follows_the_bind_address_and_allowed_host():
    from captioner.cli.main import build_parser
    from captioner.cli.serve import settings_from

    args = build_parser().parse_args(["serve", "--host", "192.0.2.7", "--allowed-host", "photos.lan"])
    assert settings_from(args).allowed_hosts == ("127.0.0.1", "localhost", "::1", "192.0.2.7", "photos.lan")
    import socket

    assert socket.gethostname().lower() in hosts_for("0.0.0.0") and "::1" in hosts_for("::")
    assert "*" in hosts_for("127.0.0.1", ("*",))


@pytest.mark.parametrize("headers", [{"origin": "http://attacker.example"},
                                     {"origin": "http://localhost:3000", "sec-fetch-site": "same-site"},
                                     {"sec-fetch-site": "cross-site"}, {"origin": "null"}])
def test_a_cross_origin_post_is_refused_before_it_is_read(app, headers, monkeypatch):
    """A cross-origin multipart POST (a form on any web page the user opens) was captioned."""
    def never(images, config):
        raise AssertionError("a cross-origin request reached the model")

    with TestClient(app, base_url=BASE) as client:
        monkeypatch.setattr(app.state.batcher, "submit", never)
        response = client.post("/api/caption", files=upload(), headers=headers)
    assert response.status_code == 403 and "--cors-origin" in response.json()["detail"]
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("headers", [{}, {"origin": BASE}, {"origin": BASE, "sec-fetch-site": "same-origin"}])
def test_same_origin_pages_and_programs_may_post(app, headers):
    with TestClient(app, base_url=BASE) as client:
        response = client.post("/api/caption", files=upload(), data={"max_length": "3"}, headers=headers)
    assert response.status_code == 200


def test_no_cors_by_default_and_cors_origin_allows_one(tiny_model):
    from captioner.serving.server import create_app

    page = "http://localhost:3000"
    with TestClient(create_app(tiny_model, warm_up=False), base_url=BASE) as client:
        assert "access-control-allow-origin" not in client.get("/api/model", headers={"origin": page}).headers
    app = create_app(tiny_model, warm_up=False, cors_origins=(page,))
    with TestClient(app, base_url=BASE) as client:
        preflight = client.options("/api/caption", headers={"origin": page, "access-control-request-method": "POST"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == page
        response = client.post("/api/caption", files=upload(), data={"max_length": "3"},
                               headers={"origin": page, "sec-fetch-site": "same-site"})
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == page
        other = client.post("/api/caption", files=upload(), headers={"origin": "http://attacker.example"})
        assert other.status_code == 403


def test_ipv6_urls_are_printed_in_brackets(tiny_model, tmp_path, monkeypatch, capsys):
    """``serve --host ::`` printed http://:::PORT/."""
    import uvicorn

    import captioner.cli.serve as serve

    tiny_model.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(serve, "check_port", lambda host, port: None)  # :: may not be bindable here
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    assert main(["serve", "--model", str(tmp_path / "m"), "--host", "::", "--port", "8123", "--device", "cpu"]) == 0
    assert "at http://[::]:8123/ " in capsys.readouterr().out
    assert url_for("::1", 80) == "http://[::1]:80/" and url_for("127.0.0.1", 80) == "http://127.0.0.1:80/"


def test_cors_origin_must_be_an_origin():
    assert main(["serve", "--cors-origin", "localhost:3000"]) == 2
    assert main(["serve", "--cors-origin", "http://localhost:3000/page"]) == 2
