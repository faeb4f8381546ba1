r"""Leave-one-out (LOO) selection of the attack step (IR paper, Appendix K; official ``leave_one_out.py``).

The transferability of an iterative attack often peaks at an intermediate step (App. K, Fig. 7), so
comparing attacks at their last step is unfair. For each image i the step is chosen on the *other*
images, for one target model at a time::

    t*_i = argmax_t  Σ_{j ≠ i} 1[x_j^t fools the target]        (first maximal t on ties)
    transferability = mean_i 1[x_i^{t*_i} fools the target]

The official code loops over i and j (O(N²·T)); with column totals ``c_t = Σ_j s_jt`` the inner sum
is ``c_t − s_it``, so all selections cost O(N·T) (:func:`loo_best_steps`). Counts are integers,
so the two computations agree exactly, ties included.

:func:`loo_best_steps_across_targets` is the other leave-one-out one may mean: for target k, choose
each image's step by its success on the *other targets* (not the paper's protocol; offered for
comparison, also O(K·N·T)).
"""

from __future__ import annotations

import torch


def _as_success(success: torch.Tensor, dims: int, shape: str) -> torch.Tensor:
    if not isinstance(success, torch.Tensor):
        raise TypeError(f"success must be a tensor of shape {shape}; got {type(success).__name__}")
    if success.dim() != dims or success.shape[-1] == 0:
        raise ValueError(f"success must have shape {shape} with T >= 1 steps; got {tuple(success.shape)}")
    if success.dtype == torch.bool:
        return success.to(torch.int64)
    if success.is_floating_point():
        if not torch.all((success == 0) | (success == 1)):
            raise ValueError("success must hold 0/1 indicators (or booleans); threshold the scores first")
        return success.to(torch.int64)
    return success.to(torch.int64)


def loo_best_steps(success: torch.Tensor) -> torch.Tensor:
    """Per-image LOO step ``t*_i`` (N,) from success indicators ``success`` (N, T), in O(N·T).

    The leave-one-out step choice of Wang et al., ICLR 2021, Appendix K."""
    s = _as_success(success, 2, "(N, T)")
    others = s.sum(dim=0, keepdim=True) - s  # Σ_{j≠i} s_jt for every (i, t)
    return others.argmax(dim=1)  # torch.argmax returns the first maximal index


def loo_success(success: torch.Tensor) -> torch.Tensor:
    """Whether each image fools the target at its LOO step: ``success[i, t*_i]`` (N,) bool."""
    s = _as_success(success, 2, "(N, T)")
    best = loo_best_steps(s)
    return s.gather(1, best[:, None]).squeeze(1).bool()


def loo_success_rate(success: torch.Tensor) -> float:
    """LOO transferability: the mean of :func:`loo_success` (NaN for no images)."""
    if success.dim() == 2 and success.shape[0] == 0:
        return float("nan")
    return float(loo_success(success).float().mean())


def loo_best_steps_across_targets(success: torch.Tensor) -> torch.Tensor:
    """For each target k and image i, the step maximising the image's success on the other targets:
    ``argmax_t Σ_{k'≠k} success[k', i, t]``; ``success`` is (K, N, T), the result (K, N)."""
    s = _as_success(success, 3, "(K, N, T)")
    others = s.sum(dim=0, keepdim=True) - s
    return others.argmax(dim=2)
