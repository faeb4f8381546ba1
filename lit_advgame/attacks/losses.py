"""Classification losses that the attack *maximises*, one value per row of logits.

* ``"ce"``: cross-entropy. Untargeted: CE(z, y) (Madry et al. 2018; the IR paper's Eq. 2 / 5).
  Targeted: −CE(z, t).
* ``"margin"``: logit margin (Carlini & Wagner 2017, without the confidence clamp).
  Untargeted: max_{k≠y} z_k − z_y. Targeted: z_t − max_{k≠t} z_k.

Rows are reduced by *summation* in :class:`~lit_advgame.attacks.base.Attack` (the official IR code
uses ``CrossEntropyLoss(reduction="sum")`` on a batch of one image): each image's objective is
then independent of the batch size, and so is the relative weight λ of the interaction term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_advgame.vocabulary import LOSSES


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{k≠label} z_k − z_label for each row."""
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return others.max(dim=1).values - label_logit


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str, targeted: bool) -> torch.Tensor:
    """Per-row objective (to maximise) for ``labels`` (true labels, or targets when ``targeted``)."""
    if kind == "ce":
        ce = F.cross_entropy(logits, labels, reduction="none")
        return -ce if targeted else ce
    if kind == "margin":
        m = margin(logits, labels)
        return -m if targeted else m
    raise ValueError(f"unknown loss {kind!r}; choose one of: {', '.join(LOSSES)}")
