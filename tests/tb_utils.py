"""Read TensorBoard event files back in tests, and the tags README.md's "TensorBoard" section names."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar.metadata import CONFIG_SUMMARY_TAG
from typing_extensions import override

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"


def _accumulators(log_dir: str | Path) -> list[EventAccumulator]:
    out = []
    for event_file in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        acc.Reload()
        out.append(acc)
    return out


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars in the event files under ``log_dir``: tag -> [(step, value), ...]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for acc in _accumulators(log_dir):
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def read_image_tags(log_dir: str | Path) -> set[str]:
    """Tags of images (figures are logged as images) in the event files under ``log_dir``."""
    return set(read_images(log_dir))


def read_images(log_dir: str | Path) -> dict[str, list[tuple[int, Image.Image]]]:
    """All images in the event files under ``log_dir``: tag -> [(step, decoded PIL image), ...]."""
    out: dict[str, list[tuple[int, Image.Image]]] = {}
    for acc in _accumulators(log_dir):
        for tag in acc.Tags()["images"]:
            out.setdefault(tag, []).extend(
                (e.step, Image.open(io.BytesIO(e.encoded_image_string))) for e in acc.Images(tag)
            )
    return out


def read_layouts(log_dir: str | Path) -> list[layout_pb2.Layout]:
    """The Custom Scalars layouts written under ``log_dir`` (one per write)."""
    layouts = []
    for acc in _accumulators(log_dir):
        if CONFIG_SUMMARY_TAG in acc.Tags()["tensors"]:
            for event in acc.Tensors(CONFIG_SUMMARY_TAG):
                layouts.append(layout_pb2.Layout.FromString(event.tensor_proto.string_val[0]))
    return layouts


# ------------------------------------------------------------------------------------------ README's tags
#: what a placeholder of the README's tag table stands for
PLACEHOLDERS = {"i": r"\d+", "o": r"(?:r\d\.\d\d|m\d+)(?:_\d+)?", "tag": r".+"}


@dataclass(frozen=True)
class ReadmeTag:
    """One row of the README's tag table: the tag as written, ``scalar`` or ``image``, and its regular expression."""

    text: str
    kind: str
    regex: re.Pattern[str]

    def matches(self, tag: str) -> bool:
        return self.regex.fullmatch(tag) is not None


def tag_regex(text: str) -> re.Pattern[str]:
    """``interaction/{clean,delta}/<o>`` -> a regular expression: ``{a,b}`` is one of the alternatives and ``<name>``
    a placeholder (:data:`PLACEHOLDERS`; any other name: one tag component)."""
    out, pos = [], 0
    for match in re.finditer(r"\{([^{}]+)\}|<([a-z_]+)>", text):
        out.append(re.escape(text[pos : match.start()]))
        if match[1] is not None:
            out.append("(?:" + "|".join(re.escape(part) for part in match[1].split(",")) + ")")
        else:
            out.append(PLACEHOLDERS.get(match[2], r"[^/]+"))
        pos = match.end()
    out.append(re.escape(text[pos:]))
    return re.compile("".join(out))


def readme_section(title: str = "TensorBoard", readme: Path = README) -> str:
    """The text of the README section ``## <title>`` (up to the next ``## `` heading)."""
    text = readme.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.S | re.M)
    if match is None:
        raise AssertionError(f"README.md has no '## {title}' section")
    return match[1]


def readme_tags(readme: Path = README) -> list[ReadmeTag]:
    """The rows ``| `tag` | scalar/image | ... |`` of the tag tables of README.md's "TensorBoard" section."""
    rows = re.findall(r"^\|\s*`([^`]+)`\s*\|\s*(scalar|image)\s*\|", readme_section(readme=readme), flags=re.M)
    return [ReadmeTag(text, kind, tag_regex(text)) for text, kind in rows]


# ------------------------------------------------------------------------------------------ a trained start
class TrainedMembers(Callback):
    """Test helper: at ``fit`` set-up every member of the ensemble (or the single classifier) gets the weights of a
    trained classifier file, so a one-step run has probes that every callback can attack and estimate on."""

    def __init__(self, path: str = str(REPO_ROOT / "checkpoints" / "digits_small_cnn.pt")) -> None:
        super().__init__()
        self.path = path

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lit_advgame.classifiers import load_classifier

        if stage != "fit":
            return
        state = load_classifier(self.path).model.state_dict()
        for member in getattr(pl_module.model, "members", None) or [pl_module.model]:
            member.load_state_dict(state)
