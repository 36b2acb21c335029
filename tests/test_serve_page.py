"""What ``POST /api/caption`` tells the page about each photo (issue 28): the tags its caption was guided by, its
confidence and whether it needs review, documented in the OpenAPI description; and what ``GET /api/model`` tells the
page about the server's limits. The page itself is tested in a browser (tests/test_serve_browser.py)."""

import math
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from captioner.cli.main import build_parser, main  # noqa: E402
from captioner.generation.confidence import ConfidenceModel  # noqa: E402
from captioner.serving.server import create_app  # noqa: E402
from captioner.serving.settings import ServeSettings  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
PHOTOS = ("coffee.jpg", "rocket.jpg")


def _files(*names):
    return [("files", (name, (SAMPLES / name).read_bytes(), "image/jpeg")) for name in names]


def _mean_log_prob_model() -> ConfidenceModel:
    """confidence = sigmoid(mean log-probability per token, <end> included)."""
    return ConfidenceModel(weights=[1.0, 0.0, 0.0, 0.0], mean=[0.0] * 4, scale=[1.0] * 4, bias=0.0)


def _caption(model, **settings) -> list[dict]:
    with TestClient(create_app(model, **settings)) as client:
        response = client.post("/api/caption", files=_files(*PHOTOS), data={"beam_size": "2", "max_length": "6"})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_without_a_confidence_model_results_have_no_confidence_and_need_no_review(tiny_model):
    for result in _caption(tiny_model):
        assert set(result) == {"filename", "caption", "beams", "tags", "confidence", "needs_review", "ms"}
        assert result["confidence"] is None and result["needs_review"] is False
        assert result["tags"] is None  # the tiny model is not guided


def test_confidence_is_the_models_and_needs_review_follows_min_confidence(tiny_model):
    tiny_model.confidence_model = _mean_log_prob_model()
    results = _caption(tiny_model)  # min_confidence 0.5 by default
    for result in results:
        best = result["beams"][0]
        tokens = len(best["caption"].split()) + 1  # the tiny vocabulary's words are tokens; <end> counts
        expected = 1 / (1 + math.exp(-best["log_prob"] / tokens))
        assert result["confidence"] == pytest.approx(expected, abs=2e-4)
        assert 0.0 <= result["confidence"] < 0.5 and result["needs_review"] is True  # a random model is unsure
    assert all(not r["needs_review"] for r in _caption(tiny_model, min_confidence=0.0))
    lowest = min(r["confidence"] for r in results)
    highest = max(r["confidence"] for r in results)
    between = _caption(tiny_model, min_confidence=(lowest + highest) / 2)
    if lowest < highest:
        assert [r["needs_review"] for r in between] == [r["confidence"] < (lowest + highest) / 2 for r in results]


def test_guided_captions_carry_their_tags_with_probabilities(tiny_model):
    with TestClient(create_app(tiny_model)) as client:
        response = client.post("/api/caption", files=_files(*PHOTOS),
                               data={"beam_size": "2", "max_length": "8", "guided": "true"})
        plain = client.post("/api/caption", files=_files("coffee.jpg"), data={"guided": "false"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert any(r["tags"] for r in results)
    for result in results:
        assert isinstance(result["tags"], list)
        for tag in result["tags"]:
            assert set(tag) == {"word", "prob"} and 0.0 < tag["prob"] <= 1.0
            assert tag["word"] in result["caption"]  # the tags the caption was guided by
    assert plain.json()["results"][0]["tags"] is None


def test_openapi_documents_the_result_fields(tiny_model):
    with TestClient(create_app(tiny_model)) as client:
        spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/api/caption"]["post"]
    for field in ("tags", "confidence", "needs_review", "--min-confidence", "beams"):
        assert field in operation["description"]
    result = spec["components"]["schemas"]["CaptionResult"]
    assert {"filename", "caption", "beams", "tags", "confidence", "needs_review", "ms"} <= set(result["properties"])
    assert "min-confidence" in result["properties"]["needs_review"]["description"]
    assert {"200", "400", "413", "503"} <= set(operation["responses"])
    form = spec["components"]["schemas"][operation["requestBody"]["content"]["multipart/form-data"]["schema"]
                                         ["$ref"].rsplit("/", 1)[1]]
    assert {"files", "beam_size", "max_length", "guided"} <= set(form["properties"])


def test_model_facts_tell_the_page_the_limits_and_the_review_threshold(tiny_model):
    with TestClient(create_app(tiny_model, max_upload_mb=3, min_confidence=0.7)) as client:
        facts = client.get("/api/model").json()
    assert facts["limits"]["max_upload_mb"] == 3 and facts["limits"]["max_files"] == 32
    assert facts["limits"]["max_request_megapixels"] == ServeSettings().max_request_megapixels
    assert facts["min_confidence"] == 0.7 and facts["confidence"] is False and facts["guided"] is False


def test_min_confidence_option_and_setting(capsys):
    from captioner.cli.serve import settings_from

    assert settings_from(build_parser().parse_args(["serve"])).min_confidence == ServeSettings().min_confidence == 0.5
    assert settings_from(build_parser().parse_args(["serve", "--min-confidence", "0.8"])).min_confidence == 0.8
    for bad in ("1.5", "-0.1", "nan", "high"):
        assert main(["serve", "--min-confidence", bad]) == 2
        assert "probability in [0, 1]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="min_confidence"):
        ServeSettings(min_confidence=2.0)


def test_guided_decoding_asked_of_a_model_that_cannot_tag_images_is_422(tiny_model, monkeypatch):
    def no_head(features):
        raise ValueError("the encoder has no ImageNet head to tag images with")

    monkeypatch.setattr(tiny_model, "imagenet_logits", no_head)
    with TestClient(create_app(tiny_model)) as client:
        refused = client.post("/api/caption", files=_files("coffee.jpg"), data={"guided": "true"})
        plain = client.post("/api/caption", files=_files("coffee.jpg"), data={"guided": "false"})
    assert refused.status_code == 422 and "guided=false" in refused.json()["detail"]
    assert plain.status_code == 200
