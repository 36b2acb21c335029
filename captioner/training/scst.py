"""Self-critical sequence training (SCST): fine-tuning the decoder on the CIDEr-D of its own free-running captions.

Teacher forcing trains every step on the reference's previous word, but at inference the decoder feeds back its own
predictions; SCST (Rennie et al. 2017, "Self-critical Sequence Training for Image Captioning") closes that gap by
optimising the metric of the captions the model itself generates, with the REINFORCE gradient. This follows the
variant of Luo (2020, "A Better Variant of Self-Critical Sequence Training"): for each image, ``K`` captions are
sampled; the baseline of each is the mean reward of the image's other ``K - 1`` samples, so no greedy decoding is
needed and the advantage is zero-mean per image. The reward is CIDEr-D with document frequencies fixed by the
training references (:class:`captioner.metrics.reward.CiderD`).

Sampling and scoring run with the decoder in eval mode (no dropout), so the gradient is exactly that of the
policy being sampled. Each batch's samples are drawn from a generator seeded by the run's seed and step, so a
resumed run draws the same captions as one never interrupted.

The SCST epochs follow the cross-entropy epochs of a run (``TrainConfig.scst_epochs``); the first one starts from
the best cross-entropy model with a fresh optimizer state at ``TrainConfig.scst_lr``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from captioner.data.batching import pad_batch
from captioner.generation import GenerationConfig, generate
from captioner.generation.logits import masked_log_probs
from captioner.metrics import coco_tokenize
from captioner.metrics.reward import CiderD
from captioner.pipeline import Captioner
from captioner.training.splits import mirror_draw
from captioner.training.state import Run, apply_gradients, xe_epochs

logger = logging.getLogger(__name__)


class CaptionReward:
    """CIDEr-D of token-id captions against the references of a split's images.

    Args:
        model: supplies the vocabulary that turns ids into words.
        references: for each image row of the split, its reference captions (raw text).
    """

    def __init__(self, model: Captioner, references: list[list[str]]) -> None:
        self._words = [tuple(coco_tokenize(word)) for word in model.vocab.itos]  # id -> coco-caption tokens
        self.cider = CiderD([[coco_tokenize(ref) for ref in refs] for refs in references])

    def __call__(self, images: list[int], captions: list[list[int]]) -> torch.Tensor:
        """Rewards ``(N,)`` of captions (ids without ``<start>``/``<end>``) of the given image rows."""
        words = [[w for token in caption for w in self._words[token]] for caption in captions]
        return torch.from_numpy(self.cider.score(images, words)).float()


def begin(run: Run) -> None:
    """Switch a run from cross-entropy to SCST: the best model so far (also copied to ``OUT/model_xe``), a fresh
    optimizer state, ``scst_lr``."""
    best = run.out / "model"
    if run.progress.best and (best / "model.safetensors").is_file():  # saved by this run's cross-entropy epochs
        best_model = Captioner.from_pretrained(best)
        # kept for comparison: SCST replaces OUT/model when it does better
        best_model.save_pretrained(run.out / "model_xe", card=(best / "README.md").read_text(encoding="utf-8"))
        run.model.decoder.load_state_dict(best_model.decoder.state_dict())
        logger.info("self-critical training starts from the best cross-entropy model (epoch %s)",
                    run.progress.best.get("epoch", "?"))
    run.optimizer.state.clear()
    for group in run.optimizer.param_groups:
        group["lr"] = run.cfg.scst_lr
    run.progress.bad_epochs = 0


def reward_for(run: Run) -> CaptionReward:
    """The run's reward, built once from its training references."""
    if run.reward is None:
        run.reward = CaptionReward(run.model, [item.captions for item in run.train.data.items])
    return run.reward


def epoch_batches(run: Run, epoch: int) -> list[list[int]]:
    """Shuffled batches of training image rows (``scst_batch_size`` images each), seeded by the epoch."""
    images = torch.tensor(sorted(set(run.train.image_index)))
    generator = torch.Generator().manual_seed(run.cfg.seed * 1000 + epoch)
    order = images[torch.randperm(len(images), generator=generator)].tolist()
    size = run.cfg.scst_batch_size
    return [order[i : i + size] for i in range(0, len(order), size)]


def epoch_step(run: Run) -> Callable[[list[int]], tuple[float, float, dict]]:
    """The step function of the current SCST epoch for the training loop: image rows → ``(loss, gradient norm,
    {"reward": mean reward of the samples})``. Switches the run to SCST at the first batch of the first SCST epoch."""
    progress, cfg = run.progress, run.cfg
    if progress.epoch == xe_epochs(cfg) + 1 and progress.batch == 0:
        begin(run)
    reward = reward_for(run)

    def step(rows: list[int]) -> tuple[float, float, dict]:
        mirror = mirror_draw(cfg.flip_features, cfg.seed, progress.step, len(rows))  # (B,) or None
        loss, mean_reward = scst_loss(run, rows, reward, seed=cfg.seed * 1_000_003 + progress.step, mirror=mirror)
        return float(loss.detach()), apply_gradients(run, loss), {"reward": mean_reward}

    return step


def scst_loss(run: Run, rows: list[int], reward: CaptionReward, seed: int,
              mirror: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The self-critical loss of one batch of images.

    Args:
        run: the training run (model, cached features, settings).
        rows: image rows of the training split.
        reward: scores sampled captions.
        seed: seeds this batch's sampling.
        mirror: ``(B,)`` bool, which images to take mirrored (``flip_features``); None: all original.

    Returns:
        ``(loss, mean reward of the samples)``; the loss is the advantage-weighted negative log-probability of the
        sampled tokens, averaged over tokens.
    """
    cfg, vocab, decoder = run.cfg, run.model.vocab, run.model.decoder
    k = cfg.scst_samples
    features = run.train.vectors(torch.tensor(rows), mirror).to(run.device)  # (B, ...): each image once
    decoder.eval()
    search = GenerationConfig(method="sample", max_length=cfg.val_max_length, seed=seed, n_best=k,
                              no_repeat_ngram=0)  # samples from the model itself: the policy being trained
    samples = [h for hyps in generate(decoder, features, vocab, search) for h in hyps]  # B*K, image by image
    rewards = reward([r for r in rows for _ in range(k)], [h.tokens for h in samples]).to(run.device)  # (B*K,)
    grouped = rewards.view(-1, k)  # (B, K)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)  # mean of the other samples
    advantage = (grouped - baseline).view(-1)  # (B*K,)
    sequences = [[vocab.start_id, *h.tokens] + ([vocab.end_id] if h.finished else []) for h in samples]
    inputs, targets = pad_batch(sequences, vocab.pad_id)  # (B*K, T)
    inputs, targets = inputs.to(run.device), targets.to(run.device)
    image_index = torch.arange(len(rows), device=run.device).repeat_interleave(k)  # (B*K,)
    logits = decoder(features, inputs, image_index=image_index)  # (B*K, T, V)
    logp = masked_log_probs(logits.reshape(-1, logits.shape[-1]), vocab).view(*targets.shape, -1)  # (B*K, T, V)
    mask = targets != vocab.pad_id  # (B*K, T)
    token_logp = logp.gather(2, targets.unsqueeze(2)).squeeze(2).masked_fill(~mask, 0.0)  # <pad> is -inf: drop it
    loss = -(advantage.unsqueeze(1) * token_logp).sum() / mask.sum().clamp(min=1)
    return loss, float(rewards.mean())
