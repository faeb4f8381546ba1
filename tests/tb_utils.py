"""Read TensorBoard event files back in tests."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars in the event files under ``log_dir``: tag -> [(step, value), ...]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event_file in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def read_image_tags(log_dir: str | Path) -> set[str]:
    """Tags of images (figures are logged as images) in the event files under ``log_dir``."""
    tags: set[str] = set()
    for event_file in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"images": 0})
        acc.Reload()
        tags.update(acc.Tags()["images"])
    return tags
