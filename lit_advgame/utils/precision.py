"""Mixed precision and memory format of a model's forward pass (masked evaluations and attacks).

One policy, used by the masked-evaluation engine (:class:`~lit_advgame.interactions.game.MaskedGame`), the
attacks (:class:`~lit_advgame.attacks.Attack`) and ``AttackModule``: **only the model's forward** runs
under ``torch.autocast`` (``autocast="bf16"`` or ``"fp16"``), and its logits are cast back to the input's
dtype (float32) at once. Everything around the forward stays in float32: the masked inputs, the value
functions and losses, the gradient w.r.t. δ (autograd casts it back to float32 at the model's input), the
gradient transforms, the projection onto the ε-ball and the clipping to [0, 1].

``autocast`` choices (:data:`~lit_advgame.vocabulary.Autocast`):

* ``None`` -- follow the ambient ``torch.autocast`` state, e.g. Lightning's ``trainer.precision:
  bf16-mixed`` (its precision plugin autocasts ``predict_step``), still with float32 logits;
* ``"none"`` -- float32, also inside an ambient autocast region;
* ``"bf16"`` / ``"fp16"`` -- autocast to bfloat16 / float16 (an error naming ``autocast`` where the
  device or the torch build does not support it).

``channels_last=True`` hands the model its input in ``torch.channels_last`` memory format (4-D inputs):
the same numbers, other convolution kernels (faster on GPUs with tensor cores, with the model's own
weights converted too: ``model.to(memory_format=torch.channels_last)``).

>>> from torch import nn
>>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
>>> x = torch.rand(2, 3, 8, 8)
>>> logits = forward_logits(model, x, autocast="bf16", channels_last=True)
>>> logits.dtype  # computed in bfloat16, returned in the input's dtype
torch.float32
>>> with torch.autocast("cpu", dtype=torch.bfloat16):  # an ambient region, e.g. Lightning's bf16-mixed
...     resolve_autocast(None, x.device), forward_logits(model, x).dtype
('bf16', torch.float32)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lit_advgame.utils.checks import check_choice
from lit_advgame.vocabulary import AUTOCAST_MODES, Autocast

#: the dtype of each autocast mode
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Lightning's mixed ``trainer.precision`` values and the autocast mode their precision plugin sets
LIGHTNING_AUTOCAST: dict[str, str] = {"bf16-mixed": "bf16", "16-mixed": "fp16"}


def check_autocast(autocast: Any, name: str = "autocast") -> None:
    """``autocast`` is ``None`` (ambient) or one of :data:`~lit_advgame.vocabulary.AUTOCAST_MODES`."""
    if autocast is not None:
        check_choice(autocast, name, AUTOCAST_MODES)


def check_channels_last(channels_last: Any, name: str = "channels_last") -> None:
    if not isinstance(channels_last, bool):
        raise TypeError(f"{name} must be a bool; got {channels_last!r}")


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def _state(device_type: str) -> tuple[bool, torch.dtype]:
    """Whether autocast is enabled on ``device_type`` and its dtype."""
    if not torch.amp.is_autocast_available(device_type):
        return False, torch.float32
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def ambient_autocast(device: torch.device | str) -> Autocast:
    """The autocast mode in force on ``device``'s type (``"none"`` outside an autocast region)."""
    enabled, dtype = _state(_device_type(device))
    if not enabled:
        return "none"
    return next((mode for mode, d in AUTOCAST_DTYPES.items() if d == dtype), "none")  # type: ignore[return-value]


def resolve_autocast(autocast: Autocast | None, device: torch.device | str) -> Autocast:
    """``autocast``, or the ambient mode on ``device`` (:func:`ambient_autocast`) for ``None``."""
    check_autocast(autocast)
    return ambient_autocast(device) if autocast is None else autocast


def lightning_autocast(precision: Any) -> Autocast:
    """The autocast mode of a Lightning ``trainer.precision`` value (``"none"`` for the non-mixed ones)."""
    return LIGHTNING_AUTOCAST.get(str(precision), "none")  # type: ignore[return-value]


def value_dtype(autocast: Autocast | None, device: torch.device | str, dtype: torch.dtype) -> torch.dtype:
    """The dtype whose rounding bounds values computed by a forward in ``dtype`` under ``autocast``."""
    return AUTOCAST_DTYPES.get(resolve_autocast(autocast, device), dtype)


@contextlib.contextmanager
def autocast_context(autocast: Autocast | None, device: torch.device | str) -> Iterator[None]:
    """The autocast region of ``autocast`` on ``device``'s type: ``None`` leaves the ambient state alone,
    ``"none"`` disables autocast, ``"bf16"``/``"fp16"`` enable it (``ValueError`` where unsupported)."""
    check_autocast(autocast)
    device_type = _device_type(device)
    if autocast is None or (autocast == "none" and not torch.amp.is_autocast_available(device_type)):
        yield
        return
    if autocast == "none":
        with torch.autocast(device_type, enabled=False):
            yield
        return
    dtype = AUTOCAST_DTYPES[autocast]
    unsupported = (
        f"autocast={autocast!r} ({dtype}) is not supported on device {device_type!r} by this torch build; "
        f"use autocast='bf16' or 'none'"
    )
    if not torch.amp.is_autocast_available(device_type):
        raise ValueError(unsupported)
    try:
        region = torch.autocast(device_type, dtype=dtype)
        region.__enter__()
    except RuntimeError as err:  # e.g. bfloat16 on a GPU without it
        raise ValueError(f"{unsupported} ({err})") from None
    try:
        if _state(device_type) != (True, dtype):  # torch disables autocast (with a warning) for unsupported dtypes
            raise ValueError(unsupported)
        yield
    finally:
        region.__exit__(None, None, None)


def forward_logits(
    model: nn.Module, x: torch.Tensor, *, autocast: Autocast | None = None, channels_last: bool = False
) -> torch.Tensor:
    """``model(x)`` under the precision policy (module docstring): the forward under ``autocast``, with the
    input in channels_last format if asked, and bfloat16/float16 outputs cast back to ``x``'s dtype."""
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(autocast, x.device):
        out = model(x)
    if isinstance(out, torch.Tensor) and out.dtype in (torch.bfloat16, torch.float16) and out.dtype != x.dtype:
        out = out.to(x.dtype)
    return out


class PrecisionModel(nn.Module):
    """``model`` whose forward follows the precision policy (:func:`forward_logits`): what an attack hands to
    its loss terms, so that e.g. the IR term's masked forwards run in the attack's precision.

    Its parameters, modes and device are the wrapped model's (``model`` is its only submodule).
    """

    def __init__(self, model: nn.Module, autocast: Autocast | None = None, channels_last: bool = False) -> None:
        super().__init__()
        check_autocast(autocast)
        check_channels_last(channels_last)
        self.model = model
        self.autocast = autocast
        self.channels_last = channels_last

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_logits(self.model, x, autocast=self.autocast, channels_last=self.channels_last)

    @override
    def extra_repr(self) -> str:
        return f"autocast={self.autocast!r}, channels_last={self.channels_last}"
