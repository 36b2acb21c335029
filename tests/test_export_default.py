"""scripts/export_default.py: the kept epochs of every run scored on the held-out images only, the winner exported
guided by default with its tag calibration, confidence and card."""

import subprocess
import sys

from conftest import REPO

from captioner.cli import main
from captioner.pipeline import Captioner


def test_export_default_chooses_on_held_out_images(flickr_mini, shared_data, tmp_path):
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        assert main(["train", "--data", str(flickr_mini), "--out", str(out), "--dry-run", "--min-count", "1",
                     "--encoder", "efficientnet_lite0", "--inject", "attention", "--batch-by-image", "--hidden-dim",
                     "32", "--holdout", "4", "--holdout-seed", "0", "--keep-epochs", "2", "--seed", str(seed)]) == 0
        runs.append(str(out))
    everyday = f"{shared_data / 'coco_mini'}:mini"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export_default.py"), *runs, "--data",
                           str(flickr_mini), "--everyday", everyday, "--dest", str(tmp_path / "export")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = (tmp_path / "export" / "README.md").read_text()
    selection = card[card.index("## Selection"): card.index("## Figures")]
    assert "| seed0/" in selection and "| seed1/" in selection
    assert selection.count("(chosen)") == 1 and "no validation or test image was looked at" in selection
    model = Captioner.from_pretrained(tmp_path / "export", device="cpu")
    assert model.config.inject == "attention" and model.config.guided
    assert model.tag_calibration is not None and model.confidence_model is not None
    # a run holding out other images than the others cannot be judged with them
    assert main(["train", "--data", str(flickr_mini), "--out", str(tmp_path / "other"), "--dry-run", "--min-count",
                 "1", "--encoder", "efficientnet_lite0", "--holdout", "4", "--holdout-seed", "5"]) == 0
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export_default.py"), runs[0], str(tmp_path / "other"),
                           "--data", str(flickr_mini), "--everyday", everyday, "--dest", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "hold out the same images" in proc.stderr
