"""scripts/export_default.py: candidates scored on the held-out images only, the winner exported with its card."""

import subprocess
import sys

from conftest import REPO

from captioner.cli import main
from captioner.pipeline import Captioner


def test_export_default_chooses_on_held_out_images(flickr_mini, tmp_path):
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        assert main(["train", "--data", str(flickr_mini), "--out", str(out), "--dry-run", "--min-count", "1",
                     "--inject", "attention", "--batch-by-image", "--hidden-dim", "32", "--holdout", "4",
                     "--holdout-seed", "0", "--scst-epochs", "1", "--seed", str(seed)]) == 0
        runs.append(str(out))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export_default.py"), *runs, "--data",
                           str(flickr_mini), "--dest", str(tmp_path / "export")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = (tmp_path / "export" / "README.md").read_text()
    selection = card[card.index("## Selection"): card.index("## Validation")]
    for name in ("seed0", "seed1", "ensemble of 2", "ensemble of 2 cross-entropy models", "ensemble of 4 (both)"):
        assert f"| {name}" in selection, name
    assert selection.count("(chosen)") == 1 and "validation split was not looked at" in selection
    model = Captioner.from_pretrained(tmp_path / "export")
    assert model.config.inject == "attention" and model.config.num_decoders in (1, 2, 4)
    # a run holding out other images than the others cannot be judged with them
    assert main(["train", "--data", str(flickr_mini), "--out", str(tmp_path / "other"), "--dry-run", "--min-count",
                 "1", "--holdout", "4", "--holdout-seed", "5"]) == 0
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export_default.py"), runs[0], str(tmp_path / "other"),
                           "--data", str(flickr_mini), "--dest", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode != 0 and "hold out the same images" in proc.stderr
