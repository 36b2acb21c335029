"""Growing a decoder's vocabulary: new embedding and output rows appended, the existing rows bit-identical.

Fine-tuning (:func:`captioner.training.finetune.extend_vocabulary`) appends rows for the new data's words and trains
them; guided decoding (:mod:`captioner.generation.guided`) appends rows for tag words the decoder never learned,
in an inference copy. Both decide the rows' starting values and call :func:`append_rows`.
"""

from __future__ import annotations

import torch
from torch import nn


def append_rows(decoder: nn.Module, embed_rows: torch.Tensor, head_rows: torch.Tensor, head_bias: torch.Tensor) -> None:
    """Replace ``decoder.embed`` and ``decoder.head`` by layers with ``n`` more rows (same device and dtype).

    Args:
        decoder: a single decoder (an ensemble's member), with ``embed`` (``nn.Embedding``) and ``head``
            (``nn.Linear``).
        embed_rows: the new words' embeddings ``(n, E)``.
        head_rows: their output weights ``(n, H)``.
        head_bias: their output biases ``(n,)``.
    """
    embed, head = decoder.embed, decoder.head
    weight = embed.weight.detach()
    decoder.embed = nn.Embedding.from_pretrained(torch.cat([weight, embed_rows.to(weight)]), freeze=False,
                                                 padding_idx=embed.padding_idx)
    # skip_init: no random initial values drawn (and no global random state consumed) for weights set right away
    grown = nn.utils.skip_init(nn.Linear, head.in_features, head.out_features + len(head_rows),
                               device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        grown.weight.copy_(torch.cat([head.weight.detach(), head_rows.to(head.weight)]))
        grown.bias.copy_(torch.cat([head.bias.detach(), head_bias.to(head.bias)]))
    decoder.head = grown


def single_decoders(decoder: nn.Module) -> list[nn.Module]:
    """The decoders that hold rows: an ensemble's members, or the decoder itself."""
    members = getattr(decoder, "members", None)
    return list(members) if members is not None else [decoder]
