"""Transfer attacks at scale with ``trainer.predict`` (IR paper, Wang et al., ICLR 2021, Sections 4-5).

* :class:`AttackModule` -- a LightningModule whose ``predict_step`` attacks a batch with an attack
  preset on source model(s) loaded from local checkpoints (CPU, one GPU or DDP);
* :class:`AdversarialWriter` -- a ``BasePredictionWriter`` saving atomic, resumable shards and merging
  them by dataset index (each example exactly once, also under DDP);
* :class:`AttackProgressBar` -- the progress bar of a predict run, counting images (images/s, ETA);
* :class:`ShardedPredictModule` -- the base of the predict jobs a shard writer saves (batch bookkeeping:
  saved and planned batches, DDP ownership, resuming; also :class:`~lit_advgame.analysis.InteractionAnalysis`);
* :class:`OutputLock` -- the lock that keeps a second run out of a folder being written;
* :func:`load_adversarial` -- read a run's examples back; :func:`load_classifier` -- load a model
  spec (classifier file, Lightning checkpoint of any training module, ensembles included, or
  ``{"arch", "weights"}`` dict) as a pixel-space classifier with metadata (re-exported from
  :mod:`lit_advgame.classifiers`, the one loader).

    lit-advgame predict --config configs/attack_quickstart.yaml
"""

from lit_advgame.predict.attack_module import RECORD_MODES, AttackModule, batch_seed
from lit_advgame.predict.lock import OutputLock, OutputLockedError
from lit_advgame.predict.models import (
    CLASSIFIER_FORMAT,
    LoadedModel,
    export_classifier,
    load_classifier,
    load_classifiers,
    margins,
)
from lit_advgame.predict.progress import AttackProgressBar
from lit_advgame.predict.sharded import ShardedPredictModule
from lit_advgame.predict.shards import (
    MERGED_NAME,
    AdversarialSet,
    dedupe_sort,
    finished_indices,
    list_shards,
    load_adversarial,
    merge_directory,
    read_meta,
    saved_batches,
    shard_name,
    write_shard,
)
from lit_advgame.predict.writer import AdversarialWriter

__all__ = [
    "CLASSIFIER_FORMAT",
    "MERGED_NAME",
    "RECORD_MODES",
    "AdversarialSet",
    "AdversarialWriter",
    "AttackModule",
    "AttackProgressBar",
    "LoadedModel",
    "OutputLock",
    "OutputLockedError",
    "ShardedPredictModule",
    "batch_seed",
    "dedupe_sort",
    "export_classifier",
    "finished_indices",
    "list_shards",
    "load_adversarial",
    "load_classifier",
    "load_classifiers",
    "margins",
    "merge_directory",
    "read_meta",
    "saved_batches",
    "shard_name",
    "write_shard",
]
