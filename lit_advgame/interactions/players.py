"""Players of an image game: grid cells (or any user-given integer player map).

A *player map* is a ``(H, W)`` long tensor that assigns every pixel to one player id in
``0 .. n-1``; all channels of a pixel belong to the same player. Grid games use
:func:`grid_player_map`; any other segmentation (superpixels, patches, ...) can be passed as a
player map directly and is checked by :func:`validate_player_map`.

Grid cells need not divide the image evenly. The image rows are split into ``L_h`` bands whose
heights differ by at most one pixel: with ``H = q * L_h + r`` (``0 <= r < L_h``) the **first**
``r`` bands are ``q + 1`` pixels high and the remaining ``L_h - r`` bands are ``q`` pixels high;
columns are split the same way. Every pixel therefore belongs to exactly one cell (unlike the
IR reference code, which uses ``H // L`` pixel cells and leaves the ``H % L`` last rows/columns
permanently outside every sampled set). Cell ``(p, q)`` (row band ``p``, column band ``q``) is
player ``p * L_w + q`` (row-major order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GridSpec = int | Sequence[int]


def grid_shape(grid: GridSpec, *, min_players: int = 1) -> tuple[int, int]:
    """``(L_h, L_w)`` of a grid given as ``L`` (an ``L x L`` grid) or ``[L_h, L_w]`` (a list or tuple).

    Raises ``TypeError`` for anything else (a bool, a float, a string, three sizes, non-integer
    sizes) and ``ValueError`` for a size below 1 or fewer than ``min_players`` cells (players),
    each message naming ``grid`` and what is allowed.
    """
    if isinstance(grid, bool):
        raise TypeError(f"grid must be an int L (an L x L grid) or a pair [L_h, L_w]; got {grid!r}")
    if isinstance(grid, int):
        rows = cols = grid
    elif isinstance(grid, Sequence) and not isinstance(grid, str) and len(grid) == 2:
        rows, cols = grid
    else:
        raise TypeError(f"grid must be an int L (an L x L grid) or a pair [L_h, L_w]; got {grid!r}")
    for value in (rows, cols):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"grid sizes must be integers; got grid={grid!r}")
        if value < 1:
            raise ValueError(f"grid sizes must be >= 1; got grid={grid!r}")
    if rows * cols < min_players:
        raise ValueError(f"grid must have at least {min_players} cells (players); got grid={grid!r}")
    return int(rows), int(cols)


def _band_index(length: int, bands: int) -> torch.Tensor:
    """Band id of each of ``length`` positions; the first ``length % bands`` bands are one longer."""
    q, r = divmod(length, bands)
    sizes = torch.full((bands,), q, dtype=torch.long)
    sizes[:r] += 1
    return torch.repeat_interleave(torch.arange(bands), sizes)


def grid_player_map(height: int, width: int, grid: GridSpec, device: torch.device | str | None = None) -> torch.Tensor:
    """Player map of an ``L_h x L_w`` grid over an ``height x width`` image.

    Args:
        height, width: image size in pixels.
        grid: ``L`` for an ``L x L`` grid or ``(L_h, L_w)``; each must not exceed the image side.
        device: device of the returned map.

    Returns:
        ``(height, width)`` long tensor; pixel ``(h, w)`` belongs to player ``p * L_w + q`` where
        ``p``/``q`` are its row/column band (the first ``H % L_h`` row bands and the first
        ``W % L_w`` column bands get one extra pixel).
    """
    for value, name in ((height, "height"), (width, "width")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"image {name} must be a positive integer; got {value!r}")
    rows, cols = grid_shape(grid)
    if rows > height or cols > width:
        raise ValueError(
            f"grid {rows}x{cols} is larger than the image ({height}x{width} pixels): every grid cell needs at "
            "least one pixel; use a grid no larger than the image side"
        )
    row_band = _band_index(height, rows)
    col_band = _band_index(width, cols)
    player_map = row_band[:, None] * cols + col_band[None, :]
    return player_map.to(device) if device is not None else player_map


def validate_player_map(player_map: torch.Tensor, height: int, width: int, name: str = "player_map") -> int:
    """Check a user player map and return the number of players ``n``.

    The map must be an integer ``(height, width)`` tensor whose values are exactly ``0 .. n-1``
    (every player owns at least one pixel; otherwise that player would be a dummy with no pixels).
    """
    if not isinstance(player_map, torch.Tensor):
        raise TypeError(f"{name} must be a (H, W) integer torch.Tensor; got {type(player_map).__name__}")
    if player_map.dim() != 2 or tuple(player_map.shape) != (height, width):
        raise ValueError(
            f"{name} must have shape (H, W) = ({height}, {width}) like the images; got {tuple(player_map.shape)}"
        )
    if player_map.is_floating_point() or player_map.is_complex() or player_map.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer player ids; got dtype {player_map.dtype}")
    if player_map.numel() == 0:
        raise ValueError(f"{name} is empty")
    low = int(player_map.min())
    high = int(player_map.max())
    if low != 0:
        raise ValueError(f"{name} ids must start at 0; got minimum {low}")
    present = torch.zeros(high + 1, dtype=torch.bool, device=player_map.device)
    present[player_map.flatten().long()] = True
    if not bool(present.all()):
        missing = torch.nonzero(~present).flatten()[:5].tolist()
        raise ValueError(
            f"{name} ids must be contiguous 0..n-1 with every player owning at least one pixel; "
            f"ids {missing} are missing"
        )
    return high + 1


def resolve_player_map(
    height: int,
    width: int,
    *,
    grid: GridSpec | None = None,
    player_map: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, int]:
    """Return ``(player_map, n)``: the explicit ``player_map`` when given (``grid`` is then ignored).

    Otherwise the map of the ``grid``."""
    if player_map is None:
        if grid is None:
            raise ValueError("pass grid (an int L for an L x L grid) or an explicit player_map")
        pm = grid_player_map(height, width, grid, device=device)
        rows, cols = grid_shape(grid)
        return pm, rows * cols
    n = validate_player_map(player_map, height, width)
    return player_map.to(device=device, dtype=torch.long), n


def player_adjacency(player_map: torch.Tensor, num_players: int | None = None) -> torch.Tensor:
    """Boolean ``(n, n)`` adjacency: players whose pixels touch (8-connectivity), no self loops.

    For a grid map this is exactly the 8-neighbourhood of the grid cells (the reference's
    3x3 window with ``local_size=1``).
    """
    pm = player_map.long().cpu()
    n = int(pm.max()) + 1 if num_players is None else num_players
    adjacency = torch.zeros(n * n, dtype=torch.bool)
    height, width = pm.shape
    for dh, dw in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = pm[: height - dh, max(0, -dw) : width - max(0, dw)]
        b = pm[dh:, max(0, dw) : width - max(0, -dw)]
        different = a != b
        adjacency[(a[different] * n + b[different])] = True
        adjacency[(b[different] * n + a[different])] = True
    return adjacency.view(n, n)


def neighbour_pairs(player_map: torch.Tensor, num_players: int | None = None) -> torch.Tensor:
    """All unordered neighbour pairs ``(i, j)``, ``i < j``, as a ``(P, 2)`` long tensor (row-major order)."""
    adjacency = player_adjacency(player_map, num_players)
    i, j = torch.nonzero(torch.triu(adjacency, diagonal=1), as_tuple=True)
    return torch.stack([i, j], dim=1)
