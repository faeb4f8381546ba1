"""The masked-evaluation engine: games ``v(S)`` on a batch of images.

A game is ``(model, images, players, value function, what an absent player becomes)``. Every
masked input is ``M_S ? present : absent`` with the pixel mask ``M_S`` of coalition ``S``:

* :class:`InputGame` (Ren et al., NeurIPS 2021): ``present = x``, ``absent = baseline``, i.e.
  ``x_S = M_S * x + (1 - M_S) * baseline``.
* :class:`PerturbationGame` (Wang et al., ICLR 2021): ``present = x + delta``, ``absent = x``, i.e.
  ``x + delta * M_S``: an absent perturbation unit keeps the clean pixel.

:meth:`MaskedGame.evaluate` takes a boolean coalition matrix ``(B, K, n)`` (or ``(K, n)`` shared
by all images) and returns the values ``(B, K)``. Masked inputs are built with tensor ops only
(a gather of the coalition rows through the per-pixel player index, then an exact ``torch.lerp``), one
chunk of ``batch_size`` inputs at a time, so at most one chunk of masked images exists at once.
Identical coalitions of the same image can be evaluated once (``dedupe=True``).

Inputs are checked: the model must be an ``nn.Module`` (a plain function gets a ``TypeError``),
images a non-empty (B >= 1) batch in [0, 1], and for the perturbation game ``x + delta`` must
lie in [0, 1] too (an attack's perturbation is clipped to the image box). Images (and ``delta``)
of another floating dtype than the model, e.g. float64 for a float32 model, are cast to the
model's dtype (differentiably), so the game and its values run in the model's dtype.

Precision: ``autocast`` (``"bf16"``/``"fp16"``; ``None``, the default, follows an ambient
``torch.autocast`` region such as Lightning's ``bf16-mixed``; ``"none"`` forces float32) runs only the
model's forward in reduced precision and casts its logits back, so masks, values and gradients w.r.t. the
images stay in the game's dtype; ``channels_last=True`` hands the model channels_last inputs (the same
numbers). See :mod:`lit_advgame.utils.precision`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lit_advgame.interactions.baselines import (
    DEFAULT_BLUR_SIGMA,
    Baseline,
    make_baseline,
)
from lit_advgame.interactions.players import GridSpec, resolve_player_map
from lit_advgame.interactions.values import (
    ValueFunction,
    resolve_value,
    runner_up_class,
)
from lit_advgame.utils.checks import (
    as_model_dtype,
    check_images,
    check_int,
    check_labels,
    check_module,
)
from lit_advgame.utils.modes import eval_mode  # re-exported by lit_advgame.interactions
from lit_advgame.utils.precision import check_autocast, check_channels_last, forward_logits
from lit_advgame.utils.precision import value_dtype as precision_value_dtype
from lit_advgame.vocabulary import Autocast

DEFAULT_BATCH_SIZE = 256
DEFAULT_GRID = 16


def resolve_batch_size(batch_size: int | None) -> int:
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    check_int(batch_size, "batch_size", minimum=1)
    return batch_size


def pack_coalitions(rows: torch.Tensor) -> torch.Tensor:
    """Pack boolean rows ``(R, n)`` exactly into int64 words ``(R, W)`` (for grouping identical rows)."""
    r, n = rows.shape
    if n <= 62:
        weights = torch.pow(2, torch.arange(n, dtype=torch.long, device=rows.device))
        return (rows.long() * weights).sum(dim=1, keepdim=True)
    num_bytes = (n + 7) // 8
    if num_bytes * 8 != n:
        rows = torch.nn.functional.pad(rows, (0, num_bytes * 8 - n))
    bit_values = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=rows.device)
    packed = (rows.view(r, num_bytes, 8).to(torch.uint8) * bit_values).sum(dim=2, dtype=torch.uint8)
    words = (num_bytes + 7) // 8
    if words * 8 != num_bytes:
        packed = torch.nn.functional.pad(packed, (0, words * 8 - num_bytes))
    return packed.contiguous().view(torch.int64)


def group_identical_rows(image_ids: torch.Tensor, rows: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Group ids of identical ``(image, coalition)`` rows: ``(U, inverse)`` with ``inverse`` in ``[0, U)``.

    Group ids are ordered by image first (so grouped rows stay sorted by image). Exact: the
    coalitions are packed into 64-bit words and combined word by word with 1-D ``torch.unique``
    (much faster than ``torch.unique(dim=0)``).
    """
    r, n = rows.shape
    num_images = int(image_ids.max()) + 1
    if n <= 30 and num_images << n <= max(1 << 22, 4 * r):
        # small games: a dense table over all (image, coalition) keys, no sorting
        keys = image_ids * (1 << n) + pack_coalitions(rows)[:, 0]
        used = torch.zeros(num_images << n, dtype=torch.long, device=rows.device)
        used[keys] = 1
        dense = used.cumsum(0) - 1
        return int(dense[-1]) + 1, dense[keys]
    ids = image_ids
    for word in pack_coalitions(rows).unbind(dim=1):
        _, word_ids = torch.unique(word, return_inverse=True)
        _, ids = torch.unique(ids * (int(word_ids.max()) + 1) + word_ids, return_inverse=True)
    return int(ids.max()) + 1, ids


class MaskedGame:
    """A batch of ``B`` games ``v_b(S)`` sharing one model, player map and value function.

    Use :class:`InputGame` or :class:`PerturbationGame` to build one.

    Attributes:
        model: the classifier (pixel-space input); evaluated in eval mode, its modes restored after.
        present, absent: images used for present / absent players (``absent`` may broadcast).
        player_map: ``(H, W)`` long tensor of player ids; ``num_players`` = n.
        value: the :class:`~lit_advgame.interactions.values.ValueFunction`.
        batch_size: masked inputs per forward pass.
        autocast, channels_last: precision and memory format of the model's forward (module docstring).
        forward_passes: number of masked inputs evaluated so far (each image counts once).
    """

    def __init__(
        self,
        model: nn.Module,
        present: torch.Tensor,
        absent: torch.Tensor,
        labels: torch.Tensor | None,
        player_map: torch.Tensor,
        num_players: int,
        value: str | Callable[..., torch.Tensor] | ValueFunction,
        *,
        target: torch.Tensor | None = None,
        batch_size: int | None = None,
        autocast: Autocast | None = None,
        channels_last: bool = False,
    ) -> None:
        check_module(model, "model")
        check_autocast(autocast)
        check_channels_last(channels_last)
        present, absent = as_model_dtype(present, model, "present"), as_model_dtype(absent, model, "absent")
        self.model = model
        self.present = present
        self.absent = absent
        self.player_map = player_map
        self.num_players = int(num_players)
        self.value = resolve_value(value)
        self.batch_size = resolve_batch_size(batch_size)
        self.autocast = autocast
        self.channels_last = channels_last
        self.forward_passes = 0
        batch = present.shape[0]
        if labels is not None:
            check_labels(labels, batch, name="y")
            labels = labels.to(present.device)
        self.labels = labels  # None: resolved lazily from the prediction on the full coalition
        if self.value.second_class == "given":
            if target is None:
                raise ValueError(f"value {self.value.name!r} needs target= (one target class per image)")
            check_labels(target, batch, name="target")
            target = target.to(present.device)
        elif target is not None:
            if self.value.second_class == "runner_up":
                raise ValueError(f"value {self.value.name!r} fixes the runner-up class itself; do not pass target=")
            raise ValueError(f"target= is only used by value 'target_minus_true'; got value {self.value.name!r}")
        self.targets = target
        self._pixel_index = player_map.reshape(-1).to(present.device)
        self._labels_checked = False

    # ------------------------------------------------------------------ properties
    @property
    def num_images(self) -> int:
        return self.present.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.present.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.present.device

    @property
    def value_dtype(self) -> torch.dtype:
        """The dtype whose rounding bounds the values: the autocast dtype of the forward, else the game's."""
        return precision_value_dtype(self.autocast, self.device, self.present.dtype)

    def model_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits of ``inputs`` in the game's precision and memory format (not counted)."""
        return forward_logits(self.model, inputs, autocast=self.autocast, channels_last=self.channels_last)

    # ------------------------------------------------------------------ classes
    def full_logits(self, *, grad: bool = False) -> torch.Tensor:
        """Logits ``(B, C)`` of the full coalition of every image (counted in :attr:`forward_passes`)."""
        with eval_mode(self.model), torch.set_grad_enabled(grad):
            logits = torch.cat(
                [
                    self.model_logits(self.present[s : s + self.batch_size])
                    for s in range(0, self.num_images, self.batch_size)
                ]
            )
        self.forward_passes += self.num_images
        return logits

    def resolve_classes(self, full_logits: torch.Tensor | None = None) -> None:
        """Fill in missing labels (prediction on the full coalition) and the fixed runner-up class.

        ``full_logits`` (``(B, C)``, logits of the full coalition) may be given to save a forward pass.
        """
        needs_labels = self.labels is None
        needs_runner_up = self.value.second_class == "runner_up" and self.targets is None
        if not (needs_labels or needs_runner_up):
            return
        full_logits = (self.full_logits() if full_logits is None else full_logits).detach()
        if needs_labels:
            self.labels = full_logits.argmax(dim=1)
        if needs_runner_up:
            self.targets = runner_up_class(full_logits, self.labels)

    # ------------------------------------------------------------------ evaluation
    def _check_images_arg(self, images: Sequence[int] | None) -> torch.Tensor:
        if images is None:
            return torch.arange(self.num_images)
        ids = torch.as_tensor(images, dtype=torch.long).flatten().cpu()
        if (
            ids.numel() == 0
            or int(ids.min()) < 0
            or int(ids.max()) >= self.num_images
            or bool((ids[1:] <= ids[:-1]).any())
        ):
            raise ValueError(f"images must be increasing indices in [0, {self.num_images - 1}]; got {ids.tolist()}")
        return ids

    def _check_coalitions(self, coalitions: torch.Tensor, batch: int) -> torch.Tensor:
        n = self.num_players
        if not isinstance(coalitions, torch.Tensor) or coalitions.dtype != torch.bool:
            raise TypeError("coalitions must be a boolean torch.Tensor of shape (B, K, n) or (K, n)")
        if coalitions.dim() == 2 and coalitions.shape[1] == n:
            coalitions = coalitions.unsqueeze(0).expand(batch, -1, -1)
        if coalitions.dim() != 3 or coalitions.shape[0] != batch or coalitions.shape[2] != n:
            raise ValueError(
                f"coalitions must have shape (B, K, n) = ({batch}, K, {n}) or (K, {n}); got {tuple(coalitions.shape)}"
            )
        return coalitions.to(self.device)

    def evaluate(
        self,
        coalitions: torch.Tensor,
        *,
        images: Sequence[int] | None = None,
        grad: bool = False,
        dedupe: bool = False,
    ) -> torch.Tensor:
        """Values ``v_b(S_bk)`` of the coalitions, shape ``(B', K)``.

        Args:
            coalitions: boolean ``(B', K, n)`` (or ``(K, n)`` for the same coalitions on every image).
            images: increasing indices of the ``B'`` images the coalitions belong to (default: all B).
            grad: keep the autograd graph (e.g. gradients w.r.t. a perturbation); otherwise
                everything runs under ``torch.no_grad()``.
            dedupe: evaluate identical coalitions of the same image once (exact: the model is
                deterministic in eval mode).
        """
        image_ids = self._check_images_arg(images)
        coalitions = self._check_coalitions(coalitions, image_ids.numel())
        batch, k, n = coalitions.shape
        self.resolve_classes()
        rows = coalitions.reshape(batch * k, n)
        image_ids = image_ids.to(self.device).repeat_interleave(k)
        inverse = None
        if dedupe and rows.shape[0] > 1:
            num_unique, inverse = group_identical_rows(image_ids, rows)
            first = torch.full((num_unique,), rows.shape[0], dtype=torch.long, device=self.device)
            first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0], device=self.device), reduce="amin")
            rows, image_ids = rows[first], image_ids[first]
        values = self.evaluate_rows(rows, image_ids, grad=grad)
        if inverse is not None:
            values = values[inverse]
        return values.view(batch, k)

    def evaluate_rows(self, rows: torch.Tensor, images: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """Values of coalition ``rows`` (``(R, n)`` bool) of the images ``images`` (``(R,)`` long, sorted)."""
        self.resolve_classes()
        total = rows.shape[0]
        if total == 0:
            return torch.empty(0, dtype=self.present.dtype, device=self.device)
        offsets = self._offsets(images)
        outputs = []
        with eval_mode(self.model), torch.set_grad_enabled(grad):
            for start in range(0, total, self.batch_size):
                stop = min(start + self.batch_size, total)
                outputs.append(self._evaluate_chunk(rows[start:stop], images[start:stop], start, stop, offsets))
        values = torch.cat(outputs)
        self.forward_passes += total
        self._check_finite(values)
        return values

    @staticmethod
    def _single_image(start: int, stop: int, offsets: Sequence[int]) -> int | None:
        """The image owning all rows ``[start, stop)`` (rows grouped by image; image b owns
        ``offsets[b] <= row < offsets[b + 1]``), or ``None`` when the chunk spans several images."""
        image = bisect.bisect_right(offsets, start) - 1
        return image if stop <= offsets[image + 1] else None

    def backward_rows(
        self, rows: torch.Tensor, images: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Values of coalition ``rows`` (as :meth:`evaluate_rows`) and ``∂(Σ_r weights_r · v_r) / ∂present``.

        Memory-bounded gradient: each chunk of ``batch_size`` masked inputs is evaluated with
        autograd and back-propagated at once (``torch.autograd.grad`` with ``weights`` as the
        upstream gradient), so at most one chunk's graph is alive; the gradients w.r.t. the images
        ``present`` (``(B, C, H, W)``, detached) are accumulated. Equal, up to the order of float
        summation, to back-propagating ``(weights * evaluate_rows(rows, images, grad=True)).sum()``
        through ``present`` (every chunk's graph kept until one backward).
        """
        self.resolve_classes()
        grad = torch.zeros_like(self.present.detach())
        total = rows.shape[0]
        if total == 0:
            return torch.empty(0, dtype=self.present.dtype, device=self.device), grad
        offsets = self._offsets(images)
        present_all = self.present.detach()
        outputs = []
        with eval_mode(self.model), torch.enable_grad():
            for start in range(0, total, self.batch_size):
                stop = min(start + self.batch_size, total)
                single = self._single_image(start, stop, offsets)
                chunk_images = images[start:stop]
                present = self._gather(present_all, single, chunk_images).requires_grad_(True)
                values = self._evaluate_chunk(rows[start:stop], chunk_images, start, stop, offsets, present=present)
                (chunk_grad,) = torch.autograd.grad(values, present, grad_outputs=weights[start:stop])
                if single is not None:
                    grad[single] += chunk_grad[0]
                else:
                    grad.index_add_(0, chunk_images, chunk_grad)
                outputs.append(values.detach())
        values = torch.cat(outputs)
        self.forward_passes += total
        self._check_finite(values)
        return values, grad

    def _offsets(self, images: torch.Tensor) -> list[int]:
        """Row offsets per image of the sorted ``images`` (image b owns rows ``offsets[b]:offsets[b + 1]``)."""
        offsets = [0]
        for count in torch.bincount(images, minlength=self.num_images).tolist():
            offsets.append(offsets[-1] + count)
        return offsets

    def _check_finite(self, values: torch.Tensor) -> None:
        if not bool(torch.isfinite(values.detach()).all()):
            raise ValueError(
                f"the value function {self.value.name!r} returned NaN or infinite values: check the model and inputs"
            )

    @staticmethod
    def _gather(images_tensor: torch.Tensor, single: int | None, images: torch.Tensor) -> torch.Tensor:
        """The rows of ``images_tensor`` for a chunk: one image (``single``) or one per row (``images``)."""
        if images_tensor.shape[0] == 1:  # a baseline shared by all images (broadcast)
            return images_tensor
        if single is not None:
            return images_tensor[single : single + 1]
        return images_tensor.index_select(0, images)

    def _evaluate_chunk(
        self,
        rows: torch.Tensor,
        images: torch.Tensor,
        start: int,
        stop: int,
        offsets: Sequence[int],
        *,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b = rows.shape[0]
        _, height, width = self.image_shape
        # pixel mask in {0, 1}: one gather of the coalition rows through the per-pixel player index
        weight = rows.to(self.present.dtype).index_select(1, self._pixel_index).view(b, 1, height, width)
        single = self._single_image(start, stop, offsets)
        if present is None:
            present = self._gather(self.present, single, images)
        absent = self._gather(self.absent, single, images)
        # lerp(a, p, w) is exact at w in {0, 1} (ATen evaluates p - (p - a)(1 - w) for w >= 0.5), so
        # present pixels are exactly `present` and absent ones exactly `absent`; it is far faster on
        # CPU than torch.where with a broadcast boolean mask.
        masked = torch.lerp(absent.expand_as(present), present, weight)
        logits = self.model_logits(masked)
        if logits.dim() != 2:
            raise ValueError(f"the model must return logits of shape (batch, classes); got {tuple(logits.shape)}")
        if not self._labels_checked:
            check_labels(self.labels, self.num_images, num_classes=logits.shape[1], name="y")
            if self.targets is not None:
                check_labels(self.targets, self.num_images, num_classes=logits.shape[1], name="target")
            self._labels_checked = True
        labels = self.labels[single].expand(b) if single is not None else self.labels.index_select(0, images)
        targets = None
        if self.targets is not None:
            targets = self.targets[single].expand(b) if single is not None else self.targets.index_select(0, images)
        return self.value(logits, labels, targets)


def _checked_players(
    model: nn.Module, x: torch.Tensor, grid: GridSpec, player_map: torch.Tensor | None
) -> tuple[torch.Tensor, int]:
    """Check the model and images of a game and return its ``(player_map, n)``."""
    check_module(model, "model")
    check_images(x, "x", allow_empty=False)
    _, _, height, width = x.shape
    return resolve_player_map(height, width, grid=grid, player_map=player_map, device=x.device)


class InputGame(MaskedGame):
    """Input game (Ren et al., NeurIPS 2021, §3): ``v(S)`` on ``x`` with absent players set to a baseline.

    Args:
        model: classifier taking pixel-space images in [0, 1] (normalization as its first layer).
        x: images ``(B, C, H, W)`` in [0, 1].
        y: class per image for the value (ground truth, or the adversarial prediction); ``None``
            uses the model's prediction on ``x``.
        grid: ``L`` or ``(L_h, L_w)`` grid of players (default 16, the reference); ignored when
            ``player_map`` is given.
        player_map: explicit ``(H, W)`` integer player ids ``0..n-1``.
        value: a name in :data:`~lit_advgame.interactions.values.VALUE_NAMES` (default
            ``"log_prob"``, the reference) or a callable ``fn(logits, labels)``.
        baseline: ``"mean"`` (default, the model's Normalize mean), ``"zeros"``, ``"blur"``, a
            per-channel mean or a tensor (see :mod:`~lit_advgame.interactions.baselines`).
        target: target class per image for ``value="target_minus_true"``.
        blur_sigma: Gaussian sigma in pixels for ``baseline="blur"``.
        batch_size: masked inputs per forward pass (default 256).
        autocast: ``"bf16"``/``"fp16"`` for the model's forward only, ``"none"`` for float32, ``None``
            (default) the ambient ``torch.autocast`` state (see the module docstring).
        channels_last: give the model its inputs in ``torch.channels_last`` memory format.

    ``x`` must hold at least one image; it is cast to the model's dtype (see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        grid: GridSpec = DEFAULT_GRID,
        player_map: torch.Tensor | None = None,
        value: str | Callable[..., torch.Tensor] = "log_prob",
        baseline: Baseline = "mean",
        target: torch.Tensor | None = None,
        blur_sigma: float = DEFAULT_BLUR_SIGMA,
        batch_size: int | None = None,
        autocast: Autocast | None = None,
        channels_last: bool = False,
    ) -> None:
        pmap, n = _checked_players(model, x, grid, player_map)
        x = as_model_dtype(x.detach(), model)
        absent = make_baseline(baseline, x, model, blur_sigma=blur_sigma)
        precision = {"autocast": autocast, "channels_last": channels_last}
        super().__init__(model, x, absent, y, pmap, n, value, target=target, batch_size=batch_size, **precision)


class PerturbationGame(MaskedGame):
    """Perturbation game (Wang et al., ICLR 2021, §3): ``v(S)`` on ``x + delta * M_S``.

    Players are cells of the perturbation; an absent cell keeps the clean pixel of ``x``.
    ``v(N)`` is the value at ``x + delta``, ``v(∅)`` at ``x``. Gradients w.r.t. ``delta`` flow
    through :meth:`evaluate` with ``grad=True`` when ``delta`` requires grad.

    Args are as for :class:`InputGame`, plus ``delta`` ``(B, C, H, W)`` (finite, with ``x + delta``
    in [0, 1] up to 1e-6: it is not clipped here, an out-of-box ``x + delta`` is a ``ValueError``),
    and the default value is ``"margin_fixed"`` (the IR reference code). ``x`` and ``delta`` are
    cast to the model's dtype (gradients still flow to ``delta``).
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        delta: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        grid: GridSpec = DEFAULT_GRID,
        player_map: torch.Tensor | None = None,
        value: str | Callable[..., torch.Tensor] = "margin_fixed",
        target: torch.Tensor | None = None,
        batch_size: int | None = None,
        autocast: Autocast | None = None,
        channels_last: bool = False,
    ) -> None:
        pmap, n = _checked_players(model, x, grid, player_map)
        check_perturbation(delta, x)
        x, delta = as_model_dtype(x.detach(), model), as_model_dtype(delta, model, "delta")
        precision = {"autocast": autocast, "channels_last": channels_last}
        super().__init__(model, x + delta, x, y, pmap, n, value, target=target, batch_size=batch_size, **precision)
        self.delta = delta


def check_perturbation(delta: torch.Tensor, x: torch.Tensor, name: str = "delta", *, tol: float = 1e-6) -> None:
    """Check ``delta`` is a finite floating tensor with the shape of ``x`` and ``x + delta`` in [0, 1] (± ``tol``)."""
    if not isinstance(delta, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor shaped like x {tuple(x.shape)}; got {type(delta).__name__}")
    if delta.shape != x.shape:
        raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}; got {tuple(delta.shape)}")
    if not delta.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {delta.dtype}")
    if not bool(torch.isfinite(delta.detach()).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if delta.device != x.device:
        raise ValueError(f"{name} is on {delta.device} but x is on {x.device}")
    with torch.no_grad():
        perturbed = x.detach() + delta.detach()
        if perturbed.numel() and (perturbed.min() < -tol or perturbed.max() > 1 + tol):
            raise ValueError(
                f"x + {name} must lie in pixel space [0, 1]; got values in [{perturbed.min().item():.4g}, "
                f"{perturbed.max().item():.4g}] (clip the perturbation to the image box: "
                f"{name} = (x + {name}).clamp(0, 1) - x)"
            )
