"""Input gradients of the members' cross-entropy and their pairwise cosine similarities.

TRS (Yang et al., NeurIPS 2021, Sec. 3) and GAL (Kariyappa & Qureshi, arXiv 1901.09981, 2019) both
regularise the members' *loss* gradients ``g_i = ∇_x CE(f_i(x), y)`` taken in pixel space (the
normalization is inside each member) with ``create_graph=True``, so that the regulariser can be
differentiated w.r.t. the weights (double backprop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_advgame.ensembles.model import EnsembleModel


def member_input_gradients(
    model: EnsembleModel, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample input gradients of every member's cross-entropy.

    Args:
        model: the ensemble (N members).
        x: (B, C, H, W) pixel-space inputs. With ``create_graph`` and ``x.requires_grad``, the
            gradients stay differentiable w.r.t. ``x`` too (the smoothness attack of TRS "plus").
        y: (B,) labels.
        create_graph: keep the graph of the gradients (needed to train through them).

    Returns:
        ``(member_logits, grads)``: logits (N, B, K) with their graph, and gradients (N, B, D),
        D = C·H·W, where ``grads[i, b] = ∇_x CE(f_i(x_b), y_b)`` for the single example b. The
        reference code differentiates the *batch-mean* CE instead, i.e. its gradients are these
        divided by B (see :func:`lit_advgame.ensembles.trs.smoothness`).
    """
    num = model.num_members
    with torch.enable_grad():
        # one copy of x per member: a single autograd.grad call gives every member's gradient.
        # If x requires grad (an attack on the gradients), the copies stay connected to it.
        inputs = x.unsqueeze(0).repeat(num, *([1] * x.dim()))
        if not inputs.requires_grad:
            inputs.requires_grad_(True)
        member_logits = torch.stack([member(inputs[i]) for i, member in enumerate(model.members)])
        losses = F.cross_entropy(member_logits.flatten(0, 1), y.repeat(num), reduction="sum")
        (grads,) = torch.autograd.grad(losses, inputs, create_graph=create_graph)
    return member_logits, grads.flatten(2)


def pair_indices(num_members: int) -> tuple[list[int], list[int]]:
    """Indices (i, j), i < j, of all N(N−1)/2 member pairs, in lexicographic order."""
    rows = [i for i in range(num_members) for _ in range(i + 1, num_members)]
    cols = [j for i in range(num_members) for j in range(i + 1, num_members)]
    return rows, cols


def pairwise_cosine(grads: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every member pair, per example.

    Args:
        grads: (N, B, D) gradients (or any vectors) of N >= 2 members.

    Returns:
        (P, B) with P = N(N−1)/2 pairs in the order of :func:`pair_indices`; a zero vector has
        cosine 0 with everything (``F.cosine_similarity``'s eps = 1e-8 guard, as the references).
    """
    if grads.dim() != 3 or grads.shape[0] < 2:
        raise ValueError(f"grads must have shape (N >= 2, B, D); got {tuple(grads.shape)}")
    rows, cols = pair_indices(grads.shape[0])
    return F.cosine_similarity(grads[rows], grads[cols], dim=-1)
