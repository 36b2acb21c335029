"""How much to trust a caption: a calibrated probability that it is right, from what the search and the encoder
know about it.

Four signals per caption (:func:`signals`): the mean log-probability of its words (the decoder's own certainty), its
length, the probability of the encoder's most likely ImageNet class (does the photo show a thing the encoder
knows?) and the spread of the encoder's feature map over the photo's locations (a blank or uniform photo has
none). A logistic model over them (Platt scaling, fit by ``scripts/calibrate_confidence.py`` on images the model
never trained on, plus blank and uniform images that no caption describes) turns them into the probability that the
caption agrees with what people wrote about the photo (its CIDEr-D against their captions reaches the calibration's
threshold). It is stored with the model as ``confidence.json``; models without one give no confidence.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from captioner.arrays import as_array, like
from captioner.generation.tags import softmax

logger = logging.getLogger(__name__)

SIGNALS = ("mean_log_prob", "length", "top_class_prob", "spread")
CONFIDENCE_FILE = "confidence.json"


@dataclass
class ConfidenceModel:
    """A fitted logistic model: ``confidence = sigmoid(bias + sum_i weights_i * (x_i - mean_i) / scale_i)``.

    Attributes:
        weights, mean, scale: one per signal of :data:`SIGNALS`.
        bias: the intercept.
        target: what "right" meant when it was fit (e.g. ``"per-image CIDEr-D >= 0.5"``).
        data: what it was fit on.
    """

    weights: list[float]
    mean: list[float]
    scale: list[float]
    bias: float
    target: str = ""
    data: str = ""

    def __call__(self, rows):
        """Confidence ``(N,)`` in [0, 1] for signal rows ``(N, len(SIGNALS))``: a float32 numpy array, or a tensor
        for a tensor."""
        x = (as_array(rows, np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        confidence = (1.0 / (1.0 + np.exp(-(x @ np.asarray(self.weights) + self.bias)))).astype(np.float32)
        return like(confidence, rows)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def from_dir(cls, directory: str | Path) -> ConfidenceModel | None:
        """A model directory's confidence model (None: it has none, or it is unreadable, which is logged)."""
        path = Path(directory) / CONFIDENCE_FILE
        if not path.is_file():
            return None
        try:
            return cls.load(path)
        except (OSError, ValueError, TypeError) as err:
            logger.warning("ignoring %s: %s", path, err)
            return None

    @classmethod
    def load(cls, path: str | Path) -> ConfidenceModel:
        """Read ``confidence.json``.

        Raises:
            ValueError: not a confidence model of this version.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        model = cls(**data)
        if not len(model.weights) == len(model.mean) == len(model.scale) == len(SIGNALS):
            raise ValueError(f"{path}: expected {len(SIGNALS)} signals {SIGNALS}")
        if not all(math.isfinite(v) for v in [*model.weights, *model.mean, *model.scale, model.bias]):
            raise ValueError(f"{path}: values must be finite numbers")
        if any(s <= 0 for s in model.scale):
            raise ValueError(f"{path}: scales must be positive")
        return model


def spread(features) -> np.ndarray:
    """How much the image varies over its locations ``(B,)``: the mean over channels of the feature map's standard
    deviation over locations (0 for pooled vectors, which have no locations)."""
    features = as_array(features, np.float32)
    if features.ndim != 3:
        return np.zeros(features.shape[0], dtype=np.float32)
    return features.std(axis=1, ddof=1).mean(axis=1)


def signal_rows(hypotheses: list, logits, features) -> np.ndarray:
    """The signal rows ``(B, len(SIGNALS))`` (float32) of each image's best hypothesis.

    Args:
        hypotheses: each image's best :class:`captioner.generation.Hypothesis`.
        logits: the encoder's ImageNet logits ``(B, 1000)`` (a numpy array or a CPU tensor).
        features: the image features ``(B, D)`` or ``(B, L, C)``.
    """
    lengths = np.array([len(h.tokens) + 1 for h in hypotheses], dtype=np.float32)  # <end> counts
    log_probs = np.array([h.log_prob for h in hypotheses], dtype=np.float32)
    top = softmax(as_array(logits, np.float32)).max(axis=1)
    return np.stack([log_probs / lengths, lengths, top, spread(features)], axis=1)


def signals(hypotheses: list, logits, features):
    """:func:`signal_rows` as a tensor (for fitting with :func:`fit`)."""
    import torch

    return torch.from_numpy(signal_rows(hypotheses, logits, features))


def add_confidence(hypotheses: list[list], logits, features, model: ConfidenceModel) -> None:
    """Give every hypothesis its confidence (in place); ``hypotheses`` per image, as the search returns them."""
    logits, features = as_array(logits), as_array(features)
    for rank in range(max((len(h) for h in hypotheses), default=0)):
        images = [i for i, h in enumerate(hypotheses) if rank < len(h)]
        rows = signal_rows([hypotheses[i][rank] for i in images], logits[images], features[images])
        for i, value in zip(images, model(rows).tolist()):
            hypotheses[i][rank].confidence = value


def fit(rows, labels, l2: float = 1.0, steps: int = 50) -> tuple[list, list, list, float]:
    """Logistic regression by Newton's method (L2-regularised weights, free bias) on standardised signals.

    Args:
        rows: signal rows ``(N, S)``.
        labels: 1 (right) or 0 ``(N,)``.

    Returns:
        ``(weights, mean, scale, bias)`` for :class:`ConfidenceModel`.
    """
    import torch

    x = torch.as_tensor(rows).double()
    mean, scale = x.mean(dim=0), x.std(dim=0).clamp(min=1e-6)
    z = torch.cat([torch.ones(len(x), 1, dtype=torch.float64), (x - mean) / scale], dim=1)  # (N, 1+S)
    y = torch.as_tensor(labels).double()
    theta = torch.zeros(z.shape[1], dtype=torch.float64)
    penalty = torch.full((z.shape[1],), l2, dtype=torch.float64)
    penalty[0] = 0.0
    for _ in range(steps):
        p = torch.sigmoid(z @ theta)
        gradient = z.T @ (p - y) + penalty * theta
        hessian = (z.T * (p * (1 - p))) @ z + torch.diag(penalty)
        theta = theta - torch.linalg.solve(hessian, gradient)
    return theta[1:].tolist(), mean.tolist(), scale.tolist(), float(theta[0])
