"""What every captioner does with images, whatever runs its graphs: images → pixels → features → image tags (for
guided decoding) → the search. :class:`ImageCaptioning` is shared by the PyTorch :class:`captioner.pipeline.Captioner`
and the ONNX Runtime captioner (:class:`captioner.export.runtime.OnnxCaptioner`); it imports no PyTorch itself, so
that the ONNX Runtime path can caption without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from captioner.captions import Caption, generation_config
from captioner.generation.confidence import ConfidenceModel, add_confidence
from captioner.generation.config import GenerationConfig, Hypothesis, with_model_defaults
from captioner.generation.tags import Tag, tags_from_logits
from captioner.image_inputs import as_rgb_image, is_batch


class ImageCaptioning:
    """Captioning of PIL images for anything with ``transform`` (image → ``(3, H, W)``), ``encode`` (pixels →
    features), ``decoder`` (the decoder contract of :mod:`captioner.models.base`), ``vocab``, ``imagenet_logits``
    (features → the encoder's ImageNet logits, for guided decoding) and ``tag_calibration``."""

    tag_calibration: dict | None = None
    confidence_model: ConfidenceModel | None = None
    feature_key_suffix = ""  # told apart in the feature cache from other backends' features of the same encoder

    def preprocess(self, images: Sequence[Image.Image]):
        """RGB PIL images → normalised pixels ``(B, 3, H, W)``, as :meth:`encode` takes them."""
        import torch

        return torch.stack([self.transform(img) for img in images])

    def encode_images(self, images: Sequence[Image.Image]):
        """Preprocess and encode RGB PIL images: features ``(B, D)`` or ``(B, L, C)``."""
        return self.encode(self.preprocess(images))

    def caption_images(
        self, images: Sequence[Image.Image], config: GenerationConfig | None = None
    ) -> list[list[Hypothesis]]:
        """Preprocess, encode and search RGB PIL images; hypotheses per image, best first."""
        if not images:
            return []
        return self.caption_features(self.encode_images(images), config)

    def caption(self, images: Any, config: GenerationConfig | None = None,
                **settings: Any) -> Caption | list[Caption]:
        """Caption one image or a list of images, whatever form they come in.

        Args:
            images: a path (``str`` or :class:`pathlib.Path`), the bytes of an image file, a PIL image of any mode, a
                numpy array ``(H, W[, C])`` or a torch tensor ``([C,] H, W)``, or a list of these
                (:mod:`captioner.image_inputs`); files are read by the command line's loader.
            config: the search (:class:`GenerationConfig`); the default is the CLI's (beam 3, the model's own
                guided-decoding and repetition settings).
            **settings: :class:`GenerationConfig` fields that override ``config``'s (``beam_size=5, n_best=3,
                return_attention=True``).

        Returns:
            One :class:`Caption` for one image; a list of them, in order, for a list.

        Raises:
            ValueError: an unknown or invalid setting, or an array that is not a picture.
            TypeError: an input of a kind not listed above.
            captioner.images.ImageLoadError: a file that cannot be read as an image (the message names it).
        """
        config = generation_config(config, settings)
        batch = list(images) if is_batch(images) else [images]
        side = self.config.preprocess.resize
        pictures = [as_rgb_image(image, min_side=side) for image in batch]
        results = [Caption.from_hypotheses(hyps, self.vocab) for hyps in self.caption_images(pictures, config)]
        return results if is_batch(images) else results[0]

    def image_tags(self, features, config: GenerationConfig | None = None) -> list[list[Tag]]:
        """Each image's tags from the encoder's ImageNet head (``config``'s threshold and maximum count, the model's
        own where it leaves them open; words the model's tag calibration found unreliable left out), most probable
        first."""
        config = with_model_defaults(config or GenerationConfig(), self.decoder)
        return tags_from_logits(self.imagenet_logits(features), config.tag_threshold, config.max_tags,
                                self.tag_calibration)

    def caption_features(self, features,
                         config: GenerationConfig | None = None) -> list[list[Hypothesis]]:
        """Search captions for image features (``(B, D)`` or ``(B, L, C)``, as :meth:`encode` gives them); see
        :func:`captioner.generation.generate`. Guided decoding asks :meth:`image_tags` for the images' tags."""
        config = with_model_defaults(config or GenerationConfig(), self.decoder)
        logits, tags = None, None
        if config.guided and not config.tags:
            logits = self.imagenet_logits(features)
            tags = tags_from_logits(logits, config.tag_threshold, config.max_tags, self.tag_calibration)
        hyps = self.search(features, config, tags)
        if self.confidence_model is not None and hyps:
            try:
                logits = self.imagenet_logits(features) if logits is None else logits
            except ValueError:  # no ImageNet head: no confidence
                return hyps
            add_confidence(hyps, logits, features, self.confidence_model)
        return hyps

    def search(self, features, config: GenerationConfig, tags: list[list[Tag]] | None) -> list[list[Hypothesis]]:
        """The search itself (``config`` with the model's defaults filled in; ``tags``: each image's, for guided
        decoding): :func:`captioner.generation.generate` on this backend's decoder."""
        from captioner.generation.core import generate

        return generate(self.decoder, self.search_features(features), self.vocab, config, tags=tags)

    def search_features(self, features) -> Any:
        """Features as this backend's decoder reads them (the PyTorch model moves them to its device)."""
        return features
