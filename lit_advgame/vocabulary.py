"""One vocabulary: every string choice of the package as a ``Literal`` alias, and its tuple of names.

Annotate an argument with an alias (``norm: Norm = "linf"``) and jsonargparse/LightningCLI reject a
bad string when the config is parsed (``--print_config`` included), naming the allowed values. The
tuple of allowed names next to each alias is derived from it with :func:`typing.get_args`, so one
definition serves the signature, the runtime check and the error message:

>>> from lit_advgame.utils.checks import check_choice
>>> NORMS
('linf', 'l2')
>>> check_choice("l2", "norm", Norm)  # a Literal alias works as the choices
>>> check_choice("l3", "norm", NORMS)
Traceback (most recent call last):
...
ValueError: unknown norm 'l3'; choose one of: linf, l2
>>> choices(Split)
('train', 'val', 'test')

Aliases name one concept each; two concepts that used to share a name have two names here
(``RadiusScaling`` of an attack's ε vs ``RegularizerScaling`` of an ensemble regularizer).
Registries that users extend at run time (model architectures, regularizers registered with
``register_regularizer``) list their built-in names only.

This module imports nothing from the package (it is a leaf of the import graph).
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin


def choices(alias: Any) -> tuple[str, ...]:
    """The allowed values of a ``Literal`` alias, in declaration order.

    >>> choices(Literal["a", "b"])
    ('a', 'b')
    """
    if get_origin(alias) is not Literal:
        raise TypeError(f"expected a typing.Literal alias; got {alias!r}")
    return tuple(get_args(alias))


# ----------------------------------------------------------------------------- data
Split = Literal["train", "val", "test"]
"""A dataset split (``predict_split``, ``probe_split``, ``ImageDataModule.dataset``)."""
SPLITS = choices(Split)

DataModuleName = Literal["digits", "mnist", "cifar10", "imagefolder"]
"""Names of :data:`lit_advgame.data.DATAMODULES`."""
DATAMODULE_NAMES = choices(DataModuleName)

MNISTMode = Literal["standard", "test_only"]
"""How :class:`~lit_advgame.data.MNISTDataModule` found its files (known after ``setup``)."""
MNIST_MODES = choices(MNISTMode)

ImageFolderLayout = Literal["class_folders", "flat"]
"""Image-folder layouts: ``root/<class>/<image>`` (torchvision's) or one folder of images named by WordNet id."""
IMAGE_FOLDER_LAYOUTS = choices(ImageFolderLayout)

EvalResize = Literal["center_crop", "resize"]
"""Evaluation transform: Resize(resize) + CenterCrop(image_size), or Resize((image_size, image_size)) without crop."""
EVAL_RESIZES = choices(EvalResize)

# ----------------------------------------------------------------------------- models
NormalizationMode = Literal["auto", "none"]
"""A model's input normalization: ``auto`` (given mean/std, else the weights', else an error for a weights file
without them) or ``none`` (the network takes raw [0, 1] pixels)."""
NORMALIZATION_MODES = choices(NormalizationMode)

# ----------------------------------------------------------------------------- attacks
Norm = Literal["linf", "l2"]
"""Perturbation norm of an attack or of adversarial training."""
NORMS = choices(Norm)

Loss = Literal["ce", "margin"]
"""Attack loss: cross-entropy or the logit margin."""
LOSSES = choices(Loss)

RadiusScaling = Literal["none", "sqrt_dim"]
"""How an attack's ``eps``/``step_size`` scale with the input dimension n (``sqrt_dim``: times √n)."""
RADIUS_SCALINGS = choices(RadiusScaling)

Unit = Literal["pixel", "1/255"]
"""Unit of ``eps``/``step_size``: pixel values in [0, 1] or 0–255 intensity levels."""
UNITS = choices(Unit)

RecordFormat = Literal["delta", "uint8"]
"""How an attack records its iterates."""
RECORD_FORMATS = choices(RecordFormat)

L2Init = Literal["image", "ball"]
"""Random start of the L2 attack: scaled like the image, or uniform in the ball."""
L2_INITS = choices(L2Init)

AttackPreset = Literal["pgd", "pgd+ir", "mi", "mi+ir", "vr", "vr+ir", "sgm", "sgm+ir", "ti", "ti+ir", "di", "hybridir"]
"""Canonical names of the attack presets (:data:`lit_advgame.attacks.presets.PRESETS`); ``build_attack``
also reads them case-insensitively, with ``-``/``_``/spaces as ``+`` and the aliases of :data:`PRESET_ALIASES`."""
ATTACK_PRESETS = choices(AttackPreset)
PRESET_ALIASES: dict[str, str] = {"ir": "pgd+ir", "hybrid": "hybridir", "hybrid+ir": "hybridir"}

ProbeAttackName = Literal[
    "strength", "pgd", "pgd+ir", "mi", "mi+ir", "vr", "vr+ir", "sgm", "sgm+ir", "ti", "ti+ir", "di", "hybridir"
]
"""The attack of an interaction analysis or probe: ``strength`` (the strength-controlled attack of Ren et al.,
NeurIPS 2021, :mod:`lit_advgame.attacks.strength`) or an attack preset (:data:`AttackPreset`)."""
PROBE_ATTACKS = choices(ProbeAttackName)

VRReduction = Literal["sum", "mean"]
"""How variance reduction (VR) combines the gradients of its noisy copies."""
VR_REDUCTIONS = choices(VRReduction)

DIMode = Literal["bilinear", "nearest"]
"""Interpolation of diverse-inputs (DI) resizing."""
DI_MODES = choices(DIMode)

SkipKind = Literal["identity", "concat", "projection"]
"""Kinds of skip connection SGM recognises."""
SKIP_KINDS = choices(SkipKind)

Autocast = Literal["none", "bf16", "fp16"]
"""Mixed precision of a model's forward in masked evaluations and attacks (:mod:`lit_advgame.utils.precision`):
float32 (``none``), or ``torch.autocast`` to bfloat16 / float16 around the forward only."""
AUTOCAST_MODES = choices(Autocast)

RecordMode = Literal["none", "uint8", "scores"]
"""What ``AttackModule`` records per step in a predict run."""
RECORD_MODES = choices(RecordMode)

# ----------------------------------------------------------------------------- interactions
ValueName = Literal["log_prob", "logit", "margin_max", "margin_fixed", "target_minus_true"]
"""Value functions v(S) of a game (:mod:`lit_advgame.interactions.values`)."""
VALUE_NAMES = choices(ValueName)

ImageValue = Literal["log_prob", "logit", "margin_max", "margin_fixed"]
"""Value functions that need no per-image target class (all of :data:`VALUE_NAMES` but ``"target_minus_true"``)."""
IMAGE_VALUES = choices(ImageValue)

BaselineName = Literal["mean", "zeros", "blur"]
"""Baseline values of absent players (:mod:`lit_advgame.interactions.baselines`)."""
BASELINE_NAMES = choices(BaselineName)

OrderPreset = Literal["reference", "reference_code", "readme", "with_zero", "fine"]
"""Named lists of interaction orders (:data:`lit_advgame.interactions.orders.ORDER_PRESETS`)."""
ORDER_PRESETS = choices(OrderPreset)

PairKind = Literal["neighbour", "uniform"]
"""How player pairs (i, j) are drawn: grid neighbours (the reference code's) or uniformly."""
PAIR_KINDS = choices(PairKind)

StrengthTarget = Literal["interaction", "shapley"]
"""What the interaction-strength estimate averages: ``|I(i, j)|`` of pairs or ``|φ(i)|`` of players (L_Shapley)."""
STRENGTH_TARGETS = choices(StrengthTarget)

StrengthEstimator = Literal["plug_in", "split"]
"""How ``|mean Δ|`` is estimated: the plug-in ``|mean|`` (biased up) or the split-sample product (unbiased square)."""
STRENGTH_ESTIMATORS = choices(StrengthEstimator)

PerturbationForm = Literal["coalition", "single"]
"""Form of the perturbation interaction: coalitions of grid cells (the IR loss) or single players."""
PERTURBATION_FORMS = choices(PerturbationForm)

InteractionScale = Literal["reference", "paper"]
"""Scale of the perturbation interaction: the reference code's, or the paper's 1/(n−1) factor."""
INTERACTION_SCALES = choices(InteractionScale)

# ----------------------------------------------------------------------------- defenses
DetectorKind = Literal["ml_loo", "shapley", "interaction"]
"""Attribution-based detectors of adversarial examples (Ren et al., NeurIPS 2021, §4.3 and supplement G): ML-LOO's
leave-one-out scores ``φ^(n-1)(i)``, multi-order Shapley values ``φ^(m)(i)`` or multi-order interactions
``I^(m)_ij`` (:mod:`lit_advgame.defenses.detection`)."""
DETECTOR_KINDS = choices(DetectorKind)

DetectorStatistic = Literal["iqr", "mean", "mean_abs", "std"]
"""How a detector turns the attributions of one image (over players or pairs) into one score: the inter-quartile
range (ML-LOO's statistic), the mean, the mean absolute value or the standard deviation."""
DETECTOR_STATISTICS = choices(DetectorStatistic)

# ----------------------------------------------------------------------------- attributions
SingletonReward = Literal["full_game", "members_absent"]
"""How ``φ_i`` of ``I[S] = φ'_S − Σ_{i∈S} φ_i`` (Wang et al., ICCV 2021, Eq. 5) is taken: in the full game
(Eq. 6 and the official code) or with the other members of ``S`` absent (:mod:`lit_advgame.attributions`)."""
SINGLETON_REWARDS = choices(SingletonReward)

RewardEstimator = Literal["taylor", "exact", "permutation"]
"""Estimators of the rewards ``φ_i``, ``φ'_S`` of perturbation pixels: the paper's gradient (Taylor) approximation
over sub-players (ICCV 2021, Eq. 7–9), the exact oracle (few players) or the engine's permutation sampling."""
REWARD_ESTIMATORS = choices(RewardEstimator)

TaylorRule = Literal["reference", "trapezoid", "removal"]
"""How a random sub-player removal order turns gradients into rewards (ICCV 2021, Eq. 7–9): every state credits
every group (Eq. 9) at the ``nK`` states after each removal (``reference``, the official code) or over all
``nK + 1`` states with half-weight ends (``trapezoid``); or each removal credits only the removed sub-player (Eq. 7
by permutation sampling, ``removal``: the gradient averaged over the states before and after the removal)."""
TAYLOR_RULES = choices(TaylorRule)

CWBox = Literal["tanh", "clip"]
"""How the L2 cost attack keeps x + δ in [0, 1]: Carlini–Wagner's tanh change of variables, or clipping δ."""
CW_BOXES = choices(CWBox)

EpsSearch = Literal["scan", "bisection"]
"""How the L∞ cost attack finds the smallest ε of its grid for which BIM succeeds: the reference's increasing
scan, or bisection over the grid (assumes success is monotone in ε)."""
EPS_SEARCHES = choices(EpsSearch)

FailurePolicy = Literal["cap", "drop", "resample"]
"""What a regional attribution does with a failed restricted attack: value cost(∅) (``cap``), leave the sample
out (``drop``), or draw a replacement sample (``resample``)."""
FAILURE_POLICIES = choices(FailurePolicy)

RegionalEstimator = Literal["exact", "stratified", "permutation"]
"""Estimators of the regional Shapley attributions: all 2^n coalitions, the reference's size-stratified
sampling, or permutation sampling."""
REGIONAL_ESTIMATORS = choices(RegionalEstimator)

# ----------------------------------------------------------------------------- training
SchedulerInterval = Literal["epoch", "step"]
"""When a learning-rate scheduler steps."""
SCHEDULER_INTERVALS = choices(SchedulerInterval)

AdversarialMethod = Literal["pgd", "trades"]
"""Adversarial training objective: PGD-AT (Madry et al.) or TRADES (Zhang et al.)."""
ADVERSARIAL_METHODS = choices(AdversarialMethod)

TradesStart = Literal["gaussian", "uniform"]
"""Random start of TRADES' inner maximisation."""
TRADES_STARTS = choices(TradesStart)

PredictMethod = Literal["certify", "predict"]
"""Randomized smoothing evaluation: CERTIFY or PREDICT (Cohen et al. 2019)."""
PREDICT_METHODS = choices(PredictMethod)

RegularizerName = Literal["none", "trs", "gal", "adp"]
"""Built-in ensemble diversity regularizers (more can be registered with ``register_regularizer``)."""
REGULARIZER_NAMES = choices(RegularizerName)

RegularizerScaling = Literal["reference", "mean"]
"""How an ensemble regularizer's pair terms are scaled: the reference code's sum or the mean."""
REGULARIZER_SCALINGS = choices(RegularizerScaling)

EnsembleAdvLoss = Literal["replace", "add"]
"""How an ensemble's adversarial loss enters: replacing the clean loss or added to it."""
ENSEMBLE_ADV_LOSSES = choices(EnsembleAdvLoss)

TRSVariant = Literal["plus", "vanilla"]
"""TRS regularizer variant (Yang et al. 2021)."""
TRS_VARIANTS = choices(TRSVariant)

BatchNormMode = Literal["eval", "train"]
"""BatchNorm mode while a regularizer or attack runs inside training."""
BATCHNORM_MODES = choices(BatchNormMode)

# ----------------------------------------------------------------------------- models and evaluation
ResNetShortcut = Literal["A", "B"]
"""CIFAR ResNet shortcut (He et al. 2016): A = zero-padding identity, B = 1×1 projection."""
RESNET_SHORTCUTS = choices(ResNetShortcut)

TransferSubset = Literal["source_correct", "all", "both_correct"]
"""Examples a transfer evaluation counts."""
TRANSFER_SUBSETS = choices(TransferSubset)

RobustnessAttack = Literal["pgd", "autoattack"]
"""Attacks of a robust-accuracy evaluation (:mod:`lit_advgame.evaluation.robustness`)."""
ROBUSTNESS_ATTACKS = choices(RobustnessAttack)

AutoAttackVersion = Literal["standard", "plus", "rand"]
"""AutoAttack versions (Croce & Hein, ICML 2020): the standard four attacks, the six of "plus", or the two
EOT attacks of "rand" (for randomized defenses)."""
AUTOATTACK_VERSIONS = choices(AutoAttackVersion)
# ----------------------------------------------------------------------------- defenses: recovery, rank, smoothing
RecoverySubset = Literal["all", "fooled"]
"""Images a recoverability summary averages over: all attacked images, or those the attack fooled."""
RECOVERY_SUBSETS = choices(RecoverySubset)

RankRounding = Literal["round", "floor", "ceil"]
"""How an SVD rank reduction turns ``fraction · k`` into a whole rank (at least 1)."""
RANK_ROUNDINGS = choices(RankRounding)

SmoothedOutput = Literal["expected_log_prob", "smoothed_log_prob"]
"""What a base classifier under Gaussian noise outputs for a game: ``E_ε[log p]`` or ``log E_ε[p]``."""
SMOOTHED_OUTPUTS = choices(SmoothedOutput)

DefenseAnalysisName = Literal["interactions", "detection", "dropout", "recovery", "rank"]
"""The analyses of the defense job (:class:`lit_advgame.defenses.DefenseAnalysis`), each switched on or off."""
DEFENSE_ANALYSES = choices(DefenseAnalysisName)


_IMPORTED = ("annotations", "Any", "Literal", "get_args", "get_origin")
__all__ = [name for name in dir() if not name.startswith("_") and name not in _IMPORTED]
