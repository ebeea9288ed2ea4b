"""TrainingRun: supervised training of CNN / LSTM / hybrid CNN+LSTM models with torchrun."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from tradewind.api.base import ApiModel, CelRule, immutable
from tradewind.api.common import DataSource, RunBase, builtin_or_extension, check_extension

BUILTIN_MODELS = ("cnn", "lstm", "attention_lstm", "hybrid")
_MODEL_CHECK, _MODEL_SCHEMA = builtin_or_extension(BUILTIN_MODELS)
ModelType = Annotated[str, Field(min_length=1, max_length=253), _MODEL_CHECK, _MODEL_SCHEMA]
"""A built-in model or an extension's, `<package>.<name>`."""

# --- data ----------------------------------------------------------------------------------


class LabelSpec(ApiModel):
    """Buy/Hold/Sell labels from the forward return over `predictionHorizon` bars."""

    buy_threshold: float = Field(default=0.01, gt=0, le=1)
    """Forward return above this is labelled Buy."""
    sell_threshold: float = Field(default=-0.01, ge=-1, lt=0)
    """Forward return below this is labelled Sell; in between is Hold."""


class SplitSpec(ApiModel):
    """Chronological hold-out split: train, then validation, then test. Never shuffled; each
    part starts predictionHorizon + 1 + embargo bars after the previous one ends, so no
    target of a part reads a bar of the next."""

    validation: float = Field(default=0.2, ge=0, le=0.5)
    """Fraction of bars (after the training part) used for validation."""
    test: float = Field(default=0.1, ge=0, le=0.5)
    """Fraction of the last bars kept for the final test."""
    embargo: int = Field(default=0, ge=0, le=100_000)
    """Bars skipped after every purge gap between a fit and the block evaluated after it
    (validation after training, test after validation, here and in every CV /
    walk-forward fold), on top of the predictionHorizon + 1 bars a trade reads."""

    cel_rules = (
        CelRule(
            "self.validation + self.test <= 0.8",
            "validation + test must leave at least 20% of the data for training",
        ),
    )


class TrainingData(DataSource):
    """Market data, features, windows and labels for supervised training."""

    lookback_window: int = Field(default=60, ge=2, le=4096)
    """Bars of history in each model input window."""
    prediction_horizon: int = Field(default=5, ge=1, le=1024)
    """Bars ahead over which the forward return (label and regression target) is measured."""
    labels: LabelSpec = Field(default_factory=LabelSpec)
    """Classification thresholds."""
    split: SplitSpec = Field(default_factory=SplitSpec)
    """Train / validation / test split."""


# --- model ---------------------------------------------------------------------------------


class ConvLayer(ApiModel):
    """One convolution scale of the CNN."""

    out_channels: int = Field(ge=1, le=4096)
    """Output channels."""
    kernel_size: int = Field(ge=1, le=255)
    """Kernel width in bars."""
    stride: int = Field(default=1, ge=1, le=16)
    """Stride in bars."""


def _default_conv_layers() -> list[ConvLayer]:
    return [
        ConvLayer(out_channels=32, kernel_size=3),
        ConvLayer(out_channels=64, kernel_size=5),
        ConvLayer(out_channels=128, kernel_size=7),
    ]


class CNNSpec(ApiModel):
    """Multi-scale 1-D convolutions over the feature window."""

    layers: list[ConvLayer] = Field(
        default_factory=_default_conv_layers, min_length=1, max_length=16
    )
    """Convolution scales, applied in parallel and concatenated."""
    batch_norm: bool = True
    """Batch normalisation after each convolution."""
    attention_heads: int = Field(default=4, ge=0, le=64)
    """Self-attention heads over the convolved sequence; 0 disables attention."""

    cel_rules = (
        CelRule(
            "self.attentionHeads == 0 || "
            "self.layers.all(l, l.outChannels % self.attentionHeads == 0)",
            "every layer's outChannels must be divisible by attentionHeads",
            ".attentionHeads",
        ),
    )


class LSTMSpec(ApiModel):
    """Recurrent encoder over the feature window."""

    hidden_size: int = Field(default=128, ge=1, le=8192)
    """Hidden units per direction."""
    num_layers: int = Field(default=2, ge=1, le=16)
    """Stacked LSTM layers."""
    bidirectional: bool = True
    """Read the window in both directions."""
    skip_connections: bool = True
    """Residual connections between stacked layers."""
    attention_heads: int = Field(default=4, ge=0, le=64)
    """Multi-head attention over the LSTM outputs; 0 disables attention."""

    cel_rules = (
        CelRule(
            "self.attentionHeads == 0 || "
            "(self.hiddenSize * (self.bidirectional ? 2 : 1)) % self.attentionHeads == 0",
            "hiddenSize (x2 when bidirectional) must be divisible by attentionHeads",
            ".attentionHeads",
        ),
    )


class FusionSpec(ApiModel):
    """How the hybrid model combines its CNN and LSTM branches."""

    method: Literal["concat", "cross_attention"] = "concat"
    """`concat` joins both embeddings; `cross_attention` lets the LSTM attend to the CNN."""
    dim: int = Field(default=128, ge=1, le=8192)
    """Width of the fused representation."""
    heads: int = Field(default=4, ge=1, le=64)
    """Attention heads for cross_attention."""

    cel_rules = (
        CelRule(
            "self.method != 'cross_attention' || self.dim % self.heads == 0",
            "dim must be divisible by heads for cross_attention",
            ".dim",
        ),
    )


class HeadsSpec(ApiModel):
    """Output heads; each enabled head adds a term to the multi-task loss."""

    num_classes: int = Field(default=3, ge=2, le=16)
    """Classes of the classification head (3 = Sell, Hold, Buy)."""
    regression: bool = True
    """Predict the forward return."""
    uncertainty: bool = True
    """Predict the log-variance of the forward return (heteroscedastic uncertainty)."""

    cel_rules = (
        CelRule(
            "!self.uncertainty || self.regression",
            "uncertainty needs regression: true",
            ".uncertainty",
        ),
    )


class ModelSpec(ApiModel):
    """The network: which architecture and its parts."""

    type: ModelType = "hybrid"
    """`cnn` (CNNModel), `lstm` (LSTMModel), `attention_lstm` (AttentionLSTM), `hybrid`
    (HybridCNNLSTM: CNN and LSTM branches fused), or an extension's model, `<package>.<name>`
    (entry point group `tradewind.models`; cnn, lstm and fusion do not apply to it)."""
    params: dict[str, Any] = Field(default_factory=dict, max_length=64)
    """Parameters of an extension's model, checked by the parameters model it declares where
    its package is installed (the trainer, `tradewind validate`); empty for the built-ins."""
    cnn: CNNSpec = Field(default_factory=CNNSpec)
    """CNN branch (cnn, hybrid)."""
    lstm: LSTMSpec = Field(default_factory=LSTMSpec)
    """LSTM branch (lstm, attention_lstm, hybrid)."""
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    """Branch fusion (hybrid)."""
    heads: HeadsSpec = Field(default_factory=HeadsSpec)
    """Output heads."""
    dropout: float = Field(default=0.2, ge=0, lt=1)
    """Dropout rate (the starting rate when training.dropoutSchedule is set)."""

    cel_rules = (
        CelRule(
            "self.type != 'attention_lstm' || self.lstm.attentionHeads > 0",
            "attention_lstm needs lstm.attentionHeads > 0",
            ".lstm.attentionHeads",
        ),
    )

    def check_semantics(self) -> None:
        # not CEL: the apiserver's CEL does not see inside a free-form object
        if self.params and self.type in BUILTIN_MODELS:
            raise PydanticCustomError(
                "extension",
                "{message}",
                {
                    "message": f"params are for an extension's model (type <package>.<name>); "
                    f"{self.type} takes none: set its fields (cnn, lstm, fusion, heads) instead",
                    "field_path": ".params",
                },
            )

    @model_validator(mode="after")
    def _check_extension(self, info: ValidationInfo) -> ModelSpec:
        check_extension(info, "model", self.type, ".type", self.params)
        return self


# --- training ------------------------------------------------------------------------------


class OptimizerSpec(ApiModel):
    """Optimizer and its hyperparameters."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    """Optimizer."""
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    """Peak learning rate."""
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    """Decoupled (adamw) or L2 (adam, sgd) weight decay."""
    beta1: float = Field(default=0.9, ge=0, lt=1)
    """Adam beta1."""
    beta2: float = Field(default=0.999, ge=0, lt=1)
    """Adam beta2."""
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """SGD momentum."""


class SchedulerSpec(ApiModel):
    """Learning-rate schedule, stepped once per epoch (or after every batch: `interval`)."""

    name: Literal["cosine_warm_restarts", "cosine", "step", "plateau", "onecycle", "none"] = (
        "cosine_warm_restarts"
    )
    """Schedule."""
    interval: Literal["epoch", "batch"] = "epoch"
    """When the rate moves: at each epoch's end, or after every optimizer step (the guide's
    loop; cosine_warm_restarts and onecycle only). With `batch`, cosine_warm_restarts
    anneals within each epoch on fractional epochs (t0 still counts epochs, PyTorch's SGDR
    recipe) and onecycle spans every step of the epochs."""
    t0: int = Field(default=10, ge=1, le=100_000)
    """cosine_warm_restarts: epochs of the first cycle."""
    t_mult: int = Field(default=2, ge=1, le=16)
    """cosine_warm_restarts: cycle length multiplier."""
    step_size: int = Field(default=10, ge=1, le=100_000)
    """step: epochs between decays."""
    gamma: float = Field(default=0.5, gt=0, le=1)
    """step and plateau: decay factor."""
    patience: int = Field(default=5, ge=0, le=10_000)
    """plateau: epochs without improvement before decaying."""
    warmup_epochs: int = Field(default=0, ge=0, le=10_000)
    """Linear warm-up epochs before the schedule starts."""
    min_learning_rate: float = Field(default=0.0, ge=0)
    """Floor of the learning rate."""

    cel_rules = (
        CelRule(
            "self.interval != 'batch' || self.name in ['cosine_warm_restarts', 'onecycle']",
            "interval batch is for cosine_warm_restarts and onecycle; the other schedules "
            "move once per epoch",
            ".interval",
        ),
        CelRule(
            "self.interval != 'batch' || self.warmupEpochs == 0",
            "warmupEpochs is for interval epoch (onecycle warms up by itself)",
            ".warmupEpochs",
        ),
    )


class LossWeights(ApiModel):
    """Weights of the multi-task loss terms."""

    classification: float = Field(default=1.0, ge=0, le=1000)
    """Cross-entropy on Buy/Hold/Sell."""
    regression: float = Field(default=0.5, ge=0, le=1000)
    """Error on the forward return (Gaussian NLL when the uncertainty head is on, else MSE)."""
    uncertainty: float = Field(default=0.1, ge=0, le=1000)
    """Regularisation of the predicted log-variance."""
    sequence: float = Field(default=1.0, ge=0, le=1000)
    """Error of the seq2seq forecast (with training.seq2seq)."""

    cel_rules = (
        CelRule(
            "self.classification + self.regression > 0.0",
            "at least one of classification and regression must have a positive weight",
        ),
    )


ValidationMetric = Literal[
    "val_loss",
    "val_accuracy",
    "val_classification",
    "val_regression",
    "val_uncertainty",
    "val_sequence",
]
"""A metric every epoch logs on the validation split: the loss, the accuracy, or one term of
the multi-task loss (which needs that term: its head on and its `lossWeights` weight above 0;
`val_sequence` also needs `training.seq2seq`)."""

HIGHER_IS_BETTER = frozenset({"val_accuracy"})
"""The validation metrics where higher is better (mode `auto` maximises them)."""


def maximizes(metric: str, mode: Literal["auto", "min", "max"]) -> bool:
    """Whether `mode` (auto: from the metric's name) wants `metric` higher."""
    return mode == "max" or (mode == "auto" and metric in HIGHER_IS_BETTER)


class EarlyStoppingSpec(ApiModel):
    """Stop when the monitored validation metric stops improving."""

    enabled: bool = True
    """Set false to always train for all epochs."""
    patience: int = Field(default=10, ge=1, le=100_000)
    """Epochs without improvement before stopping."""
    min_delta: float = Field(default=1e-3, ge=0)
    """Smallest change that counts as an improvement."""
    monitor: ValidationMetric = "val_loss"
    """Validation metric to watch (it also ranks the best checkpoint and the reported epoch)."""
    mode: Literal["auto", "min", "max"] = "auto"
    """Whether lower or higher is better; auto: higher for val_accuracy, lower for the rest."""
    restore_best_weights: bool = True
    """Report (test metrics, backtest, walk-forward tables, figures) and log to MLflow the
    weights of the epoch with the best `monitor` value, as the best checkpoint is chosen: on
    validation, never on test; with `enabled: false` too. False: the last epoch's weights."""

    @property
    def maximize(self) -> bool:
        return maximizes(self.monitor, self.mode)


class AugmentationSpec(ApiModel):
    """Training-time augmentation of feature windows."""

    noise_std: float = Field(default=0.01, ge=0, le=10)
    """Std of Gaussian noise added to normalised features."""
    time_shift_max: int = Field(default=0, ge=0, le=1024)
    """Random shift of the window start by up to this many bars."""
    probability: float = Field(default=0.5, ge=0, le=1)
    """Probability that a sample is augmented."""


class DropoutScheduleSpec(ApiModel):
    """Anneal dropout linearly from `model.dropout` to `final` over the epochs."""

    final: float = Field(default=0.1, ge=0, lt=1)
    """Dropout rate at the last epoch."""


class CurriculumSpec(ApiModel):
    """Curriculum learning: start on easy (calm) data and widen to all of it, a stage at a
    time, when the validation metric reaches the stage's bar."""

    strategy: Literal["volatility", "regime"] = "volatility"
    """Order windows by realised volatility, or by market regime (calm, trending, volatile:
    the synthetic source's own; for other data, read from each window's past bars: volatile
    when its volatility is 1.5x the symbol's median so far, trending when its move is more
    than that volatility explains, else calm)."""
    stages: int = Field(default=3, ge=2, le=10)
    """Difficulty stages; the last stage uses all data."""
    min_epochs_per_stage: int = Field(default=2, ge=1, le=10_000)
    """Epochs spent in a stage before it may progress."""
    progress_metric: ValidationMetric = "val_loss"
    """Validation metric a stage's bar is read on (never a test metric)."""
    progress_threshold: float | None = Field(default=None, gt=0)
    """One bar for every stage: progress when progressMetric reaches it (at or below it; at
    or above it for val_accuracy). Unset (and no stageThresholds): progress after
    minEpochsPerStage."""
    stage_thresholds: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None, min_length=1, max_length=9
    )
    """A bar per stage, to leave stage 1, 2, ... (stages - 1 of them), e.g. a rising
    val_accuracy [0.55, 0.6]; instead of progressThreshold."""

    cel_rules = (
        CelRule(
            "!has(self.stageThresholds) || !has(self.progressThreshold)",
            "set progressThreshold (one bar for every stage) or stageThresholds (one per "
            "stage), not both",
            ".stageThresholds",
        ),
        CelRule(
            "!has(self.stageThresholds) || size(self.stageThresholds) == self.stages - 1",
            "stageThresholds needs one bar per stage but the last: stages - 1 of them",
            ".stageThresholds",
        ),
    )

    def threshold(self, stage: int) -> float | None:
        """The bar to leave `stage` (0-based); None: no bar."""
        if self.stage_thresholds is not None:
            return self.stage_thresholds[stage]
        return self.progress_threshold

    def reached(self, stage: int, value: float) -> bool:
        """Whether `value` of progressMetric clears `stage`'s bar (always, without one)."""
        bar = self.threshold(stage)
        if bar is None:
            return True
        return value >= bar if maximizes(self.progress_metric, "auto") else value <= bar


class AdversarialSpec(ApiModel):
    """Adversarial training with PGD perturbations of the inputs."""

    epsilon: float = Field(default=0.01, gt=0, le=1)
    """Max L-inf perturbation of normalised features."""
    alpha: float = Field(default=0.002, gt=0, le=1)
    """PGD step size."""
    steps: int = Field(default=5, ge=1, le=100)
    """PGD steps per batch."""
    weight: float = Field(default=0.5, ge=0, le=1)
    """Weight of the adversarial loss against the clean loss."""

    cel_rules = (CelRule("self.alpha <= self.epsilon", "alpha must not exceed epsilon", ".alpha"),)


class MetaLearningSpec(ApiModel):
    """MAML across symbols: each symbol is a task."""

    inner_learning_rate: float = Field(default=0.01, gt=0, le=10)
    """Learning rate of the inner (task) adaptation."""
    inner_steps: int = Field(default=3, ge=1, le=100)
    """Adaptation steps per task."""
    tasks_per_batch: int = Field(default=4, ge=1, le=1024)
    """Symbols sampled per meta-batch."""
    first_order: bool = True
    """First-order MAML (no second derivatives)."""
    adaptation_bars: int = Field(default=0, ge=0, le=10_000)
    """Few-shot adaptation at evaluation; 0 turns it off. Each symbol of the test split is a
    new task: a copy of the meta-learned model takes `adaptationSteps` SGD steps at
    `innerLearningRate` on the symbol's first `adaptationBars` test samples (one batch), and
    is scored on that symbol's samples after them and the purge gap (predictionHorizon + 1 +
    split.embargo samples, so no scored target shares a bar with an adaptation target).
    Reported beside the un-adapted model on the same samples: `test_adapted_*` and
    `test_unadapted_*`, `backtest_adapted_*` and `backtest_unadapted_*`; `test_*` stays the
    un-adapted model on the whole test split."""
    adaptation_steps: int | None = Field(default=None, ge=1, le=1000)
    """SGD steps of the adaptation at evaluation; unset = `innerSteps`, the adaptation the
    model was meta-trained for."""


class Seq2SeqSpec(ApiModel):
    """Sequence-to-sequence decoding of the next `outputLength` returns with teacher forcing."""

    output_length: int = Field(default=5, ge=1, le=1024)
    """Steps the decoder predicts."""
    teacher_forcing_ratio: float = Field(default=0.5, ge=0, le=1)
    """Initial probability of feeding the true previous value to the decoder."""
    teacher_forcing_decay: float = Field(default=0.95, gt=0, le=1)
    """Per-epoch multiplier of the ratio."""


class TrainingSpec(ApiModel):
    """The training loop and its techniques."""

    epochs: int = Field(default=20, ge=1, le=100_000)
    """Passes over the training data."""
    batch_size: int = Field(default=64, ge=1, le=65536)
    """Samples per step per process (global batch = batchSize x processes)."""
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    """Optimizer."""
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    """Learning-rate schedule."""
    grad_clip: float | None = Field(default=1.0, gt=0)
    """Max gradient norm; unset disables clipping."""
    loss_weights: LossWeights = Field(default_factory=LossWeights)
    """Multi-task loss weights."""
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    """Early stopping; on by default (patience 10 on val_loss)."""
    augmentation: AugmentationSpec | None = None
    """Noise and time-shift augmentation; off when unset."""
    dropout_schedule: DropoutScheduleSpec | None = None
    """Dropout annealing; off when unset."""
    curriculum: CurriculumSpec | None = None
    """Curriculum learning; off when unset."""
    adversarial: AdversarialSpec | None = None
    """PGD adversarial training; off when unset."""
    meta_learning: MetaLearningSpec | None = None
    """MAML meta-learning across symbols; off when unset."""
    seq2seq: Seq2SeqSpec | None = Field(default=None, alias="seq2seq")
    """Seq2seq decoding with teacher forcing (lstm and attention_lstm only); off when unset."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision; bf16 where the hardware supports it, fp16 with a grad scaler."""
    deterministic: bool = False
    """Use deterministic kernels (slower on GPU)."""

    cel_rules = (
        CelRule(
            "!has(self.metaLearning) || !has(self.curriculum)",
            "metaLearning and curriculum cannot be combined",
            ".metaLearning",
        ),
    )


class EvaluationSpec(ApiModel):
    """Out-of-sample evaluation of the trained model."""

    walk_forward_window: int | None = Field(default=None, ge=10, le=100_000)
    """Walk-forward analysis: bars in each training window; unset disables it."""
    walk_forward_step: int = Field(default=21, ge=1, le=100_000)
    """Walk-forward analysis: bars the window advances each fold."""
    cv_splits: int = Field(default=0, ge=0, le=50)
    """Time-series cross-validation folds (expanding window); 0 disables it."""
    transaction_cost: float = Field(default=0.001, ge=0, le=0.1)
    """Proportional cost per unit of turnover in the backtest of the model's signals."""
    slippage: float = Field(default=0.0, ge=0, le=0.1)
    """Proportional adverse price move on each fill, charged per unit of turnover on top of
    transactionCost (as in the RL environment)."""


# --- your own code --------------------------------------------------------------------------


PYTHON_MODULE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
ModuleName = Annotated[str, Field(min_length=1, max_length=253, pattern=PYTHON_MODULE)]
Arg = Annotated[str, Field(max_length=4096)]


class Entrypoint(ApiModel):
    """Your own training code in place of the built-in trainer: a Python module or a
    command, started by the launcher on every node with the Kubeflow-compatible environment
    (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK, PET_*) and Tradewind's
    checkpoint and MLflow contract (TRADEWIND_CHECKPOINT_DIR, MLFLOW_RUN_ID, ...: see
    docs/own-code.md). The image (`spec.image`) must hold the code and have `tradewind`
    installed (build it `FROM` the trainer image)."""

    module: ModuleName | None = None
    """Python module to run as `python -m <module>`, e.g. `mypackage.train`."""
    command: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        default=None, min_length=1, max_length=64
    )
    """Program and its first arguments, e.g. `[python, /app/train.py]` (an absolute path,
    or one relative to the image's working directory)."""
    args: list[Arg] = Field(default_factory=list, max_length=256)
    """Arguments after the module or command."""
    launcher: Literal["torchrun", "none"] = "torchrun"
    """`torchrun` starts procsPerNode processes per node (torchrun's c10d rendezvous; each
    process gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from torchrun).
    `none` starts the code once per pod, as PyTorchJob does without torchrun: RANK is the
    pod's index, WORLD_SIZE the number of nodes, MASTER_ADDR:MASTER_PORT the first pod's
    address; it needs procsPerNode 1."""

    cel_rules = (
        CelRule(
            "has(self.module) != has(self.command)",
            "set exactly one of module (run as python -m) and command (a program and its "
            "arguments)",
            ".module",
        ),
    )


_TERM_METRIC_ON = (
    "(({metric} != 'val_classification' || self.training.lossWeights.classification > 0.0) && "
    "({metric} != 'val_regression' || "
    "(self.model.heads.regression && self.training.lossWeights.regression > 0.0)) && "
    "({metric} != 'val_uncertainty' || "
    "(self.model.heads.uncertainty && self.training.lossWeights.uncertainty > 0.0)) && "
    "({metric} != 'val_sequence' || "
    "(has(self.training.seq2seq) && self.training.lossWeights.sequence > 0.0)))"
)
_TERM_METRIC_MESSAGE = (
    "a loss term the run does not compute: val_classification needs "
    "lossWeights.classification > 0, val_regression and val_uncertainty their head "
    "(model.heads) and weight > 0, val_sequence training.seq2seq and lossWeights.sequence > 0"
)


class TrainingRunSpec(RunBase):
    """A supervised training run: data, model, training loop, evaluation, and where it runs;
    or your own code (`entrypoint`) with the same launcher, checkpoints and tracking."""

    nodes: int = Field(default=1, ge=1, le=256)
    """Pods (torchrun nodes); each runs procsPerNode processes."""
    procs_per_node: int = Field(default=1, ge=1, le=16)
    """Processes per node (one per GPU with device cuda)."""
    entrypoint: Entrypoint | None = None
    """Run your own code instead of the built-in trainer; unset runs the built-in trainer.
    With it set, Tradewind does not read data, model, training or evaluation; your code may
    (the run's manifest is at $TRADEWIND_RUN_CONFIG, with a Sweep trial's values in it)."""
    data: TrainingData = Field(default_factory=TrainingData)
    """Market data, features and labels."""
    model: ModelSpec = Field(default_factory=ModelSpec)
    """The network."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """The training loop."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Evaluation after training."""

    cel_rules = (
        *immutable("nodes", "procsPerNode", "device", "data", "model", "managedBy"),
        CelRule(
            "!has(self.entrypoint) || self.entrypoint.launcher != 'none' || self.procsPerNode == 1",
            "entrypoint.launcher none starts one process per pod: procsPerNode must be 1 "
            "(or use launcher torchrun)",
            ".entrypoint.launcher",
        ),
        CelRule(
            "!has(self.training.seq2seq) || self.model.type in ['lstm', 'attention_lstm']",
            "training.seq2seq needs model.type lstm or attention_lstm",
            ".training.seq2seq",
        ),
        CelRule(
            "!has(self.training.seq2seq) || ('returns' in self.data.features && "
            "self.training.seq2seq.outputLength <= self.data.predictionHorizon)",
            "training.seq2seq forecasts the next bars' returns: data.features must include "
            "returns and outputLength must not exceed data.predictionHorizon",
            ".training.seq2seq",
        ),
        CelRule(
            _TERM_METRIC_ON.format(metric="self.training.earlyStopping.monitor"),
            _TERM_METRIC_MESSAGE,
            ".training.earlyStopping.monitor",
        ),
        CelRule(
            "!has(self.training.curriculum) || "
            + _TERM_METRIC_ON.format(metric="self.training.curriculum.progressMetric"),
            _TERM_METRIC_MESSAGE,
            ".training.curriculum.progressMetric",
        ),
        CelRule(
            "self.training.precision != 'fp16' || self.device == 'cuda'",
            "precision fp16 needs device cuda (use bf16 or fp32 on cpu)",
            ".training.precision",
        ),
        CelRule(
            "!has(self.evaluation.walkForwardWindow) || "
            "self.evaluation.walkForwardWindow > "
            "self.data.lookbackWindow + self.data.predictionHorizon",
            "evaluation.walkForwardWindow must exceed data.lookbackWindow + data.predictionHorizon",
            ".evaluation.walkForwardWindow",
        ),
    )
