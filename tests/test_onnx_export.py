"""ONNX export and the onnxruntime backend: the exported graphs, searched by the same generate(), caption exactly
as the PyTorch model (shipped default on the demo photos; tiny pooled, attention, ensemble and old models), and bad
input gets one error line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import tiny_config  # noqa: E402

from captioner.cli import main  # noqa: E402
from captioner.cli.common import CliError  # noqa: E402
from captioner.cli.export import check_out  # noqa: E402
from captioner.export.onnx import EXPORT_FILES, MANIFEST, export_onnx
from captioner.export.runtime import OnnxCaptioner
from captioner.export.torch_decoder import compare_backends
from captioner.generation import GenerationConfig
from captioner.generation.tags import constrained_config
from captioner.images import load_image  # noqa: E402
from captioner.models.encoders import ImageEncoder
from captioner.pipeline import Captioner

OLD_MODELS = Path(__file__).parent / "fixtures" / "old_models"
SEARCHES = {"greedy": GenerationConfig(method="greedy", max_length=12),
            "beam3": GenerationConfig(beam_size=3, n_best=3, max_length=12)}
MORE_SEARCHES = {  # the numpy search's other rules, against PyTorch's (tests/test_array_search.py: the pieces)
    "greedy_ngram": GenerationConfig(method="greedy", max_length=12, no_repeat_ngram=2),
    "beam4_penalty_ngram": GenerationConfig(beam_size=4, n_best=2, max_length=12, length_penalty=0.7,
                                            no_repeat_ngram=3),
    "beam2": GenerationConfig(beam_size=2, max_length=15),
}
TINY = {  # ModelConfig fields over tiny_config; a 12-channel encoder (7 x 7 map at 224 px)
    "pooled_lstm": dict(encoder_dim=12),
    "gru_init_only_2layers": dict(encoder_dim=12, cell="gru", inject="init_only", num_layers=2),
    "attention": dict(encoder_dim=12, inject="attention", feature_locations=49, attention_dim=10),
    "attention_ensemble": dict(encoder_dim=12, inject="attention", feature_locations=49, attention_dim=10,
                               num_decoders=2),
}


def tiny_encoder(spatial: bool) -> ImageEncoder:
    """A one-convolution encoder: exported in a fraction of a second (the real ones take several seconds)."""
    torch.manual_seed(1)
    return ImageEncoder(nn.Sequential(nn.Conv2d(3, 12, 32, stride=32), nn.ReLU()), out_dim=12, spatial=spatial).eval()


def _tokens(hyps):
    return [[h.tokens for h in image] for image in hyps]


def _images(n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (60 + 10 * i, 80, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory, request):
    """Each TINY model and its export directory, made once."""
    from conftest import WORDS

    from captioner.vocab import Vocabulary

    vocab, out = Vocabulary(WORDS), {}
    for name, fields in TINY.items():
        torch.manual_seed(0)
        config = tiny_config(len(vocab), **fields)
        model = Captioner(config, vocab, encoder=tiny_encoder(config.attention)).eval()
        directory = tmp_path_factory.mktemp("onnx") / name
        export_onnx(model, directory)
        out[name] = (model, OnnxCaptioner(directory))
    return out


@pytest.mark.parametrize("search", sorted(SEARCHES))
@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_models_caption_identically_with_onnxruntime(tiny_exports, name, search):
    model, exported = tiny_exports[name]
    images = _images()
    want = model.caption_images(images, SEARCHES[search])
    got = exported.caption_images(images, SEARCHES[search])
    assert _tokens(got) == _tokens(want)
    assert [h.log_prob for image in got for h in image] == pytest.approx(
        [h.log_prob for image in want for h in image], abs=1e-4)


@pytest.mark.parametrize("search", sorted(MORE_SEARCHES))
@pytest.mark.parametrize("name", ["attention", "gru_init_only_2layers"])
def test_the_numpy_search_follows_the_torch_search(tiny_exports, name, search):
    model, exported = tiny_exports[name]
    images = _images(6)
    want = model.caption_images(images, MORE_SEARCHES[search])
    got = exported.caption_images(images, MORE_SEARCHES[search])
    assert "torch" not in type(got[0][0].log_prob).__module__
    assert _tokens(got) == _tokens(want)
    assert [h.score for image in got for h in image] == pytest.approx(
        [h.score for image in want for h in image], abs=1e-4)


def test_settled_images_leave_the_numpy_beam_search_with_the_same_captions(tmp_path, monkeypatch):
    """Images whose answer is settled leave the batch (fewer rows per step), the first step runs one row per image,
    and each image gets the caption it gets alone."""
    from conftest import WORDS

    from captioner.vocab import Vocabulary

    vocab = Vocabulary(WORDS)
    torch.manual_seed(3)
    config = tiny_config(len(vocab), **TINY["attention"])
    model = Captioner(config, vocab, encoder=tiny_encoder(True)).eval()
    with torch.no_grad():
        model.decoder.head.bias[vocab.end_id] += 0.35  # some images' captions end at once, others run on
    export_onnx(model, tmp_path / "ending")
    exported = OnnxCaptioner(tmp_path / "ending")
    features = np.random.default_rng(0).normal(size=(6, 49, 12)).astype(np.float32) * 4  # images far apart
    config = GenerationConfig(beam_size=3, n_best=2, max_length=15)
    alone = [exported.caption_features(features[i : i + 1], config)[0] for i in range(6)]
    rows, step = [], exported.decoder.step

    def counting(tokens, context, state):
        rows.append(len(tokens))
        return step(tokens, context, state)

    monkeypatch.setattr(exported.decoder, "step", counting)
    together = exported.caption_features(features, config)
    assert _tokens(together) == _tokens(alone) == _tokens(model.caption_features(torch.from_numpy(features), config))
    assert rows[0] == 6  # the first step runs once per image: its three beams start as the same row
    assert rows[1] == 18 and rows[-1] < 18  # images left before the longest one ended


def test_the_onnx_captioner_gives_back_what_it_is_given(tiny_exports):
    _, exported = tiny_exports["attention"]
    pixels = np.stack([exported.array_transform(image) for image in _images(2)])  # (2, 3, H, W) float32
    features = exported.encode(pixels)
    assert isinstance(features, np.ndarray) and features.shape[:2] == (2, 49)
    tensor = exported.encode(torch.from_numpy(pixels))
    assert isinstance(tensor, torch.Tensor) and torch.equal(tensor, torch.from_numpy(features))
    assert np.array_equal(exported.encode_images(_images(2)), features)


CONSTRAINED = {
    "beam3_nbest2": GenerationConfig(beam_size=3, n_best=2, max_length=12),
    "beam4_penalty_ngram": GenerationConfig(beam_size=4, max_length=12, length_penalty=0.7, no_repeat_ngram=2),
    "one_beam": GenerationConfig(beam_size=1, max_length=12, length_penalty=0.0),
}


@pytest.mark.parametrize("search", sorted(CONSTRAINED))
@pytest.mark.parametrize("name", ["attention", "pooled_lstm"])
def test_the_constrained_search_gives_onnxruntime_the_captions_of_pytorch(tiny_exports, name, search):
    """The one constrained search over the PyTorch decoder (tensors on its device) and over the export (numpy):
    words, phrases, tokens refused before a constraint, an opener, a tag word the vocabulary lacks (the PyTorch copy
    of the decoder and the export give it the same row), images with no constraint and with constraints of other
    lengths."""
    import copy

    from captioner.generation import constrained
    from captioner.generation.constraint_states import Constraint
    from captioner.generation.guided import add_tag_words, guided_decoder

    model, exported = tiny_exports[name]
    vocab, ids = exported.vocab, exported.vocab.stoi
    model_vocab = copy.deepcopy(model.vocab)
    add_tag_words(model_vocab)
    assert model_vocab.extra == vocab.extra
    zebra = vocab.extra.index("zebra") + len(vocab)  # a row the export made for a tag word
    constraints = [
        [Constraint((ids["dog"],))],
        [Constraint((ids["red"], ids["ball"]), forbid_before=(ids["a"],))],
        [Constraint((ids["cat"],)), Constraint((ids["the"], ids["grass"]))],
        [],
        [Constraint((zebra,), at_start=True), Constraint((ids["blue"],), forbid_before=(ids["the"], ids["on"]))],
        [Constraint((ids["a"], zebra), forbid_before=(ids["a"],)), Constraint((ids["runs"],))],
    ]
    features = np.random.default_rng(1).normal(size=(6, *exported.encode_images(_images(1)).shape[1:]))
    features = features.astype(np.float32)
    config = CONSTRAINED[search]
    with torch.inference_mode():
        want = constrained.constrained_search(guided_decoder(model.decoder, model_vocab), torch.from_numpy(features),
                                              model_vocab, config, constraints, plain_vocab=len(model_vocab))
    got = constrained.constrained_search(exported.decoder.with_extra_rows(vocab), features, vocab, config,
                                         constraints, plain_vocab=len(vocab))
    assert _tokens(got) == _tokens(want)
    assert [h.log_prob for image in got for h in image] == pytest.approx(
        [h.log_prob for image in want for h in image], abs=1e-4)
    assert any(zebra in h.tokens for image in got for h in image)


@pytest.mark.parametrize("search", sorted(CONSTRAINED))
def test_without_constraints_the_constrained_search_is_beam_search_exactly(tiny_exports, search):
    from captioner.generation import array_search, constrained

    _, exported = tiny_exports["attention"]
    features = np.random.default_rng(2).normal(size=(5, 49, 12)).astype(np.float32) * 3
    config = CONSTRAINED[search]
    plain = array_search.array_search(exported.decoder, features, exported.vocab, config)
    unconstrained = constrained.constrained_search(exported.decoder, features, exported.vocab,
                                                   constrained_config(config), [[]] * 5)
    assert [[(h.tokens, h.log_prob, h.score, h.finished) for h in image] for image in unconstrained] == [
        [(h.tokens, h.log_prob, h.score, h.finished) for h in image] for image in plain]


@pytest.mark.parametrize("fallback", [False, True])
def test_guided_captions_with_given_tags_follow_pytorch(tiny_exports, fallback):
    model, exported = tiny_exports["attention"]
    config = GenerationConfig(tags=("red ball", "cat"), guided_fallback=fallback, max_length=12)
    images = _images(4)
    want, got = model.caption_images(images, config), exported.caption_images(images, config)
    assert _tokens(got) == _tokens(want)
    assert all(h.tags == ["red ball", "cat"] or [t.text for t in h.tags] == ["red ball", "cat"]
               for image in got for h in image)


@pytest.mark.parametrize("name", sorted(TINY))
def test_step_logits_and_features_match(tiny_exports, name):
    model, exported = tiny_exports[name]
    pixels = torch.stack([model.transform(img) for img in _images(3)])  # batch 3: not the export's batch of 2
    diffs = compare_backends(model, exported, pixels, steps=4)
    assert diffs["features"] < 1e-4 and diffs["logits"] < 1e-4, diffs


def test_the_export_is_self_contained_with_dynamic_batch(tiny_exports):
    import onnx

    _, exported = tiny_exports["attention"]
    directory = exported.directory
    assert sorted(p.name for p in directory.iterdir()) == sorted(EXPORT_FILES)
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["opset"] == 17 and manifest["torch_version"] == torch.__version__
    assert manifest["onnx_version"] == onnx.__version__ and manifest["state"] == ["state_0", "state_1"]  # h, c
    step = onnx.load(str(directory / manifest["graphs"]["decoder_step"]))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in step.graph.input}
    assert dims["tokens"] == ["batch"] and dims["state_0"] == [1, "batch", 24] and dims["context_0"][0] == "batch"


@pytest.mark.parametrize("name", ["lstm_every_step", "gru_init_only", "lstm2_every_step"])
def test_old_model_directories_export_and_caption_as_they_did(name, tmp_path):
    loaded = Captioner.from_pretrained(OLD_MODELS / name)
    model = Captioner(loaded.config, loaded.vocab, encoder=tiny_encoder(False))  # their configs say 12-d images
    model.decoder.load_state_dict(loaded.decoder.state_dict())
    export_onnx(model.eval(), tmp_path / "export")
    exported = OnnxCaptioner(tmp_path / "export")
    features = load_file(str(OLD_MODELS / "features.safetensors"))["features"]  # (4, 12)
    expected = json.loads((OLD_MODELS / "expected.json").read_text())[name]
    for search, config in SEARCHES.items():
        assert _tokens(exported.caption_features(features, config)) == [
            [h["tokens"] for h in image] for image in expected[search]]


# --- the shipped default model on the demo photos -------------------------------------------------------------


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    """The default model exported by the CLI (about 10 s: the Lite2 encoder)."""
    out = tmp_path_factory.mktemp("default") / "onnx"
    assert main(["export", "--out", str(out)]) == 0
    return out


@pytest.fixture
def demo_photos(shared_data) -> list[Path]:
    photos = sorted((shared_data / "demo").glob("*.jpg"))
    if not photos:
        pytest.skip("no demo photos")
    return photos


@pytest.mark.slow
@pytest.mark.parametrize("search", [["--beam-size", "1"], [], ["--guide-always"], ["--plain", "--beam-size", "5"]])
def test_default_model_captions_are_identical_on_the_demo_photos(default_export, demo_photos, capsys, search):
    """PyTorch and ONNX Runtime give the same captions: greedy, the default (beam 3, guided as a fallback: numpy's
    beam search, then the constrained search through PyTorch for the photos that need it), always guided, plain."""
    capsys.readouterr()
    common = ["caption", *map(str, demo_photos), *search, "--batch-size", "8"]
    assert main([*common, "--backend", "torch"]) == 0
    want = capsys.readouterr().out
    assert main([*common, "--backend", "onnxruntime", "--model", str(default_export)]) == 0
    got = capsys.readouterr().out
    assert got == want and len(got.splitlines()) == len(demo_photos)


@pytest.mark.slow
def test_default_model_step_logits_within_1e_4(default_export, demo_photos):
    model = Captioner.from_pretrained("default")
    exported = OnnxCaptioner(default_export)
    pixels = torch.stack([model.transform(load_image(p)) for p in demo_photos[:3]])
    diffs = compare_backends(model, exported, pixels, steps=5)
    assert diffs["logits"] < 1e-4 and diffs["features"] < 1e-3, diffs


# --- bad input: one error line ---------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _one_error_line(capsys, code: int, needle: str) -> None:
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err, err


def test_export_refuses_to_replace_without_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "encoder.onnx").write_bytes(b"old")
    _one_error_line(capsys, main(["export", "--model", str(model_dir), "--out", str(out)]), "--overwrite")
    check_out(out, str(model_dir), overwrite=True)  # allowed to replace an export
    (out / "notes.txt").write_text("precious")
    _one_error_line(capsys, main(["export", "--model", str(model_dir), "--out", str(out), "--overwrite"]),
                    "holds other files")
    _one_error_line(capsys, main(["export", "--model", str(model_dir), "--out", str(model_dir)]), "--model directory")
    with pytest.raises(CliError):
        check_out(out, str(model_dir), overwrite=True)
    assert (out / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("extra, needle", [
    (["--model", "NOWHERE"], "cannot load model"),
    (["--model", "MODEL", "--device", "cuda"], "runs on the CPU"),
])
def test_the_onnxruntime_backend_refuses_what_it_cannot_run_in_one_line(model_dir, tmp_path, capsys, extra, needle):
    extra = [str(model_dir) if a == "MODEL" else str(tmp_path / "nowhere") if a == "NOWHERE" else a for a in extra]
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    _one_error_line(capsys, main(["caption", str(image), "--backend", "onnxruntime", *extra]), needle)


def test_a_model_directory_is_exported_into_the_cache_once_and_captions_as_with_pytorch(model_dir, tmp_path,
                                                                                        monkeypatch, capsys):
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    captions = {}
    for backend in ("torch", "onnxruntime", "auto"):
        assert main(["caption", str(image), "--model", str(model_dir), "--backend", backend, "--plain"]) == 0
        captions[backend] = capsys.readouterr().out.split("\t")[-1]
    assert captions["torch"] == captions["onnxruntime"] == captions["auto"]
    exports = list((tmp_path / "cache" / "onnx").iterdir())
    assert len(exports) == 1 and (exports[0] / "onnx_manifest.json").is_file()  # exported once, reused by auto


def test_the_default_model_is_exported_into_the_cache_once(tiny_exports, tmp_path, monkeypatch, capsys):
    import shutil

    import captioner.export.onnx as exporter
    import captioner.export.runtime as backend

    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    target = backend.default_export_dir()
    assert target.parent == tmp_path / "cache" / "onnx" and target.name.startswith("default-")
    model, exported = tiny_exports["attention"]
    calls = []

    def fake_export(what, directory):  # the real default takes ~30 s to export: stand in a tiny model's export
        calls.append(directory)
        shutil.copytree(exported.directory, directory)

    monkeypatch.setattr(exporter, "export_onnx", fake_export)
    monkeypatch.setattr(Captioner, "from_pretrained", classmethod(lambda cls, *a, **k: model))
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    for _ in range(2):
        assert main(["caption", str(image), "--backend", "onnxruntime", "--beam-size", "1"]) == 0
    assert calls == [target]  # exported on first use only
    want = model.caption([load_image(image)], GenerationConfig(method="greedy"))[0].text
    assert capsys.readouterr().out.splitlines()[-1].endswith(want)


def test_a_corrupt_graph_is_one_error_line(tiny_exports, tmp_path, capsys):
    import shutil

    _, exported = tiny_exports["pooled_lstm"]
    broken = tmp_path / "broken"
    shutil.copytree(exported.directory, broken)
    (broken / "decoder_step.onnx").write_bytes(b"not a graph")
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    _one_error_line(capsys, main(["caption", str(image), "--backend", "onnxruntime", "--model", str(broken)]),
                    "export the model again")


def test_onnxruntime_is_not_imported_by_the_cli_or_the_torch_path():
    code = "import sys; from captioner.cli.main import build_parser; build_parser(); print('onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("side", [31, 32])
def test_tf_same_padding_is_fixed_for_the_export_size(side, tmp_path):
    import onnx
    from timm.layers.conv2d_same import Conv2dSame

    from captioner.export.onnx import _export, _FixedPadConv, fix_same_padding

    torch.manual_seed(0)
    net = nn.Sequential(Conv2dSame(3, 4, 3, stride=2), nn.ReLU(), Conv2dSame(4, 4, 5, stride=2, groups=4)).eval()
    pixels = torch.randn(2, 3, side, side)
    fixed = fix_same_padding(net, pixels)
    assert isinstance(fixed[0], _FixedPadConv) and isinstance(fixed[2], _FixedPadConv)
    assert isinstance(net[0], Conv2dSame)  # the model's own encoder is left alone
    with torch.no_grad():
        assert torch.equal(fixed(pixels), net(pixels))
    _export(fixed, (pixels,), tmp_path / "g.onnx", ["pixels"], ["out"], {"pixels": {0: "batch"}}, 17)
    graph = onnx.load(str(tmp_path / "g.onnx")).graph
    assert "Shape" not in {n.op_type for n in graph.node}  # the pads no longer depend on the input's shape
    assert all("" not in n.input for n in graph.node)  # so that ONNX Runtime fuses each Pad into its Conv


def test_caption_model_accepts_an_export_directory_and_torch_says_which_flag(tiny_exports, tmp_path, capsys):
    """`caption --model EXPORT_DIR` used to fail with "missing model.safetensors" (issue 25, item 4)."""
    model, exported = next(iter(tiny_exports.values()))
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    assert main(["caption", str(image), "--model", str(exported.directory)]) == 0
    assert capsys.readouterr().out.strip().endswith(model.caption(image).text)
    _one_error_line(capsys, main(["caption", str(image), "--model", str(exported.directory), "--backend", "torch"]),
                    "--backend onnxruntime")


def test_serve_takes_max_image_pixels_like_the_other_commands():
    from captioner.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--max-image-pixels", "500000000"])
    assert args.max_image_pixels == 500_000_000
