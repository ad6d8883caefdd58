"""The TransferJob API: one set of pydantic models for the CRD schema, the SDK, the operator and the trainer.

Everything that describes a TransferJob is defined here exactly once. `transferjob.crd` renders these
models into the CRD's OpenAPI schema (with the CEL rules attached below), the SDK submits them, the
operator parses stored objects with them, and the trainer reads its spec file with them. Field names are
snake_case in Python and camelCase on the wire (`model_dump(by_alias=True)`).

Defaults reproduce the reference workflow (MobileNetV2 at 224x224, batch 16, Dropout 0.2, Adam 1e-4 for
feature extraction and 1e-5 for fine-tuning from `block_13_expand`, early stopping on val_loss with
patience 3 and min_delta 1e-3, best weights restored). Defaults that depend on the mode (epochs,
learning rate, fineTuneAt) cannot be expressed in an OpenAPI schema, so they are left empty in the CRD
and resolved by `TransferJobSpec` itself, which every reader of a spec goes through.
"""

from __future__ import annotations

import datetime as dt
import math
from enum import Enum
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from transferjob.bases import BASES, MAX_IMAGE_SIZE, SAVED_MODEL_SUFFIXES, is_model_path
from transferjob.constants import API_VERSION, DEFAULT_TRAINER_IMAGE, HISTORY_LIMIT, KIND
from transferjob.errors import SpecError

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A path inside a volume or data folder: relative, no `..` segments.
RELATIVE_PATH = r"^$|^[^/](.*[^/])?$"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

_FEATURE_EXTRACTION_DEFAULTS = {"epochs": 5, "learning_rate": 1e-4}
_FINE_TUNING_DEFAULTS = {"epochs": 10, "learning_rate": 1e-5}


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry: the API server evaluates it at admission."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def _relative_path_ok(value: str, field: str) -> str:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f"{field} must be a relative path without '..' segments, got {value!r}")
    return value


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, snake_case in Python, unknown fields rejected.

    Rejecting unknown fields in the SDK catches typos (`learnigRate`) before submission; the API server
    would prune them silently.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase keys, no empty optionals, JSON types only."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Mode(str, Enum):
    """What the job trains."""

    FEATURE_EXTRACTION = "FeatureExtraction"
    FINE_TUNING = "FineTuning"


class Phase(str, Enum):
    """Where a TransferJob is in its life."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


# --------------------------------------------------------------------------------------------- spec


class PVCSource(ApiModel):
    """A PersistentVolumeClaim in the TransferJob's namespace."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.subPath) || !('..' in self.subPath.split('/'))",
                    "subPath must not contain '..' segments",
                    ".subPath",
                )
            ]
        }
    )

    claim_name: str = Field(
        description="Name of the PersistentVolumeClaim.", max_length=253, pattern=DNS_SUBDOMAIN
    )
    sub_path: str = Field(
        default="",
        max_length=1024,
        pattern=RELATIVE_PATH,
        description="Folder inside the volume; empty for the volume's root.",
    )

    @field_validator("sub_path")
    @classmethod
    def _sub_path_relative(cls, value: str) -> str:
        return _relative_path_ok(value, "subPath")


class Location(ApiModel):
    """Where files live: exactly one of a PVC, a node path or a URI the trainer can read."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.pvc) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
                    "exactly one of pvc, hostPath or uri must be set",
                )
            ]
        }
    )

    pvc: PVCSource | None = Field(default=None, description="A PersistentVolumeClaim and a folder in it.")
    host_path: str | None = Field(
        default=None,
        max_length=1024,
        pattern=r"^/",
        description="An absolute folder on the node (single-node and kind clusters, local runs).",
    )
    uri: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^([a-z][a-z0-9+.-]*://|/).+",
        description="A URI the trainer reads with tf.io.gfile (gs://, s3://, hdfs://, file://) or an "
        "absolute path inside the trainer's container.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Location:
        chosen = [n for n in ("pvc", "host_path", "uri") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError(f"exactly one of pvc, hostPath or uri must be set, got {len(chosen)}")
        return self


class HeadSpec(ApiModel):
    """The new classifier put on top of the base network's features."""

    pooling: Literal["avg", "max"] = Field(
        default="avg", description="Global pooling of the base's feature map: avg (GAP) or max."
    )
    dropout: float = Field(
        default=0.2, ge=0.0, lt=1.0, description="Dropout rate before the classifier; 0 disables it."
    )
    hidden_units: list[Annotated[int, Field(ge=1, le=8192)]] = Field(
        default_factory=list,
        max_length=8,
        description="Sizes of optional Dense+ReLU layers before the classifier; empty for the reference "
        "head (pooling, dropout, one Dense layer).",
    )


class ModelSpec(ApiModel):
    """The pretrained network to transfer from and the head trained on it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.base in {sorted(BASES)} || self.base.contains('/') || "
                    + " || ".join(f"self.base.endsWith('{s}')" for s in SAVED_MODEL_SUFFIXES),
                    "base must be a keras.applications network name or the path of a saved Keras model "
                    "(.keras/.h5)",
                    ".base",
                ),
                cel(
                    "!(has(self.fromJob) && has(self.fromModel))",
                    "fromJob and fromModel are mutually exclusive",
                    ".fromJob",
                ),
                *[
                    cel(
                        f"self.base != '{b.name}' || self.weights != 'imagenet' || "
                        f"self.imageSize in {list(b.imagenet_sizes)}",
                        f"imageSize must be one of {list(b.imagenet_sizes)} for {b.name} with imagenet "
                        "weights",
                        ".imageSize",
                    )
                    for b in BASES.values()
                    if b.imagenet_sizes
                ],
                *[
                    cel(
                        f"self.base != '{b.name}' || self.imageSize >= {b.min_size}",
                        f"imageSize must be at least {b.min_size} for {b.name}",
                        ".imageSize",
                    )
                    for b in BASES.values()
                    if b.min_size > 32
                ],
            ]
        }
    )

    base: str = Field(
        default="MobileNetV2",
        min_length=1,
        max_length=2048,
        description="A keras.applications network name (MobileNetV2, VGG16, ResNet50, ...) or the path/URI "
        "of a saved Keras model (.keras/.h5) to use as the base.",
    )
    weights: str = Field(
        default="imagenet",
        min_length=1,
        max_length=2048,
        description="Base weights: 'imagenet' (downloaded by Keras), 'none' (random), or the path/URI of a "
        "weights file. Ignored when base is a saved model.",
    )
    image_size: int = Field(
        default=224,
        ge=32,
        le=MAX_IMAGE_SIZE,
        description="Images are resized to imageSize x imageSize; must be a size the base accepts.",
    )
    fine_tune_at: int | str | None = Field(
        default=None,
        description="Integer or string. FineTuning only: the base layer (its name, or its index from 0) from "
        "which layers train; earlier layers stay frozen. Defaults to the base's last blocks (block_13_expand "
        "for MobileNetV2).",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    from_job: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL,
        description="FineTuning only: name of a TransferJob in the same namespace whose exported model is "
        "fine-tuned; the job waits until that one has succeeded.",
    )
    from_model: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="FineTuning only: path/URI of a saved Keras model (base + head) to fine-tune.",
    )
    head: HeadSpec = Field(default_factory=HeadSpec, description="The classifier trained on the features.")

    @field_validator("fine_tune_at")
    @classmethod
    def _fine_tune_at_sane(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 0:
            raise ValueError("fineTuneAt must be a layer name or an index >= 0")
        if isinstance(value, str) and not value.strip():
            raise ValueError("fineTuneAt must not be empty")
        return value

    @model_validator(mode="after")
    def _base_accepts_size(self) -> ModelSpec:
        if self.from_job is not None and self.from_model is not None:
            raise ValueError("fromJob and fromModel are mutually exclusive")
        if is_model_path(self.base):
            return self
        info = BASES.get(self.base)
        if info is None:
            known = ", ".join(sorted(BASES))
            raise ValueError(
                f"base {self.base!r} is neither a known keras.applications network ({known}) nor the "
                "path of a saved model (.keras/.h5)"
            )
        if self.image_size < info.min_size:
            raise ValueError(
                f"imageSize must be at least {info.min_size} for {info.name}, got {self.image_size}"
            )
        if self.weights == "imagenet" and info.imagenet_sizes and self.image_size not in info.imagenet_sizes:
            raise ValueError(
                f"imageSize must be one of {list(info.imagenet_sizes)} for {info.name} with imagenet "
                f"weights, got {self.image_size}"
            )
        return self


class AugmentationSpec(ApiModel):
    """Random changes to training images (never to validation or test images)."""

    enabled: bool = Field(default=True, description="Augment the training set.")
    flip: Literal["horizontal", "vertical", "horizontal_and_vertical", "none"] = Field(
        default="horizontal", description="Random flips."
    )
    rotation: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Random rotation, as a fraction of a full turn (Keras)."
    )
    zoom: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Random zoom in or out by up to this fraction."
    )
    translation: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Random shift by up to this fraction of height and width."
    )
    crop: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="Random crop removing up to this fraction of each side, resized back to imageSize.",
    )
    cached_views: int = Field(
        default=4,
        ge=1,
        le=64,
        description="FeatureExtraction only: augmented views per image whose base features are computed "
        "once and cycled through the epochs, instead of running the frozen base every epoch.",
    )


class DataSpec(ApiModel):
    """Labelled images in the Keras `image_dataset_from_directory` layout: one sub-folder per class."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"!self.{d}.startsWith('/') && !('..' in self.{d}.split('/'))",
                    f"{d} must be a relative path without '..' segments",
                    f".{d}",
                )
                for d in ("trainDir", "valDir", "testDir")
            ]
        }
    )

    source: Location = Field(description="Where the image folders are; mounted read-only.")
    train_dir: str = Field(default="train", min_length=1, max_length=512, description="Training images.")
    val_dir: str = Field(default="val", min_length=1, max_length=512, description="Validation images.")
    test_dir: str = Field(default="test", min_length=1, max_length=512, description="Test images.")
    class_names: list[str] | None = Field(
        default=None,
        min_length=2,
        max_length=1000,
        description="Class sub-folders to use, in label order; default: all sub-folders, sorted.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    augmentation: AugmentationSpec = Field(
        default_factory=AugmentationSpec, description="Training-set augmentation."
    )
    cache: Literal["auto", "memory", "none"] = Field(
        default="auto",
        description="Keep decoded images (or cached features) in memory: auto does when they fit.",
    )

    @field_validator("train_dir", "val_dir", "test_dir")
    @classmethod
    def _dirs_relative(cls, value: str) -> str:
        return _relative_path_ok(value, "data directories")

    @field_validator("class_names")
    @classmethod
    def _classes_distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if len(set(value)) != len(value):
            raise ValueError("classNames must not repeat a class")
        for name in value:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"classNames entry {name!r} is not a folder name")
        return value


class EarlyStoppingSpec(ApiModel):
    """Stop when the monitored metric stops improving, and keep the best epoch's weights."""

    enabled: bool = Field(default=True, description="Use early stopping.")
    monitor: Literal["val_loss", "val_accuracy"] = Field(default="val_loss", description="Metric watched.")
    patience: int = Field(default=3, ge=0, le=1000, description="Epochs without improvement before stopping.")
    min_delta: float = Field(
        default=1e-3, ge=0.0, le=1.0, description="Smallest change counted as improvement."
    )
    restore_best_weights: bool = Field(
        default=True, description="Roll back to the best epoch's weights before testing and export."
    )


class TrainingSpec(ApiModel):
    """How the model trains."""

    epochs: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="Maximum epochs (early stopping may end sooner). Default: 5 for FeatureExtraction, "
        "10 for FineTuning.",
    )
    batch_size: int = Field(default=16, ge=1, le=4096, description="Images per step (across all GPUs).")
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = Field(default="adam", description="Optimizer.")
    learning_rate: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description="Learning rate. Default: 1e-4 for FeatureExtraction, 1e-5 for FineTuning (a very small "
        "rate keeps what the base already learned).",
    )
    early_stopping: EarlyStoppingSpec = Field(
        default_factory=EarlyStoppingSpec, description="Early stopping on validation metrics."
    )
    seed: int = Field(
        default=42, ge=0, le=2**31 - 1, description="Seed for shuffling, augmentation and init."
    )
    mixed_precision: bool = Field(
        default=False, description="Train in float16 with float32 variables (GPUs with tensor cores)."
    )


class OutputSpec(ApiModel):
    """Where the exported model, checkpoints, metrics and TensorBoard logs go."""

    location: Location = Field(description="Written by the trainer; checkpoints here make runs resumable.")
    saved_model: bool = Field(default=True, description="Also export a TensorFlow SavedModel for serving.")
    tensorboard: bool = Field(default=True, description="Write TensorBoard logs under tensorboard/.")


class Toleration(ApiModel):
    """A Kubernetes toleration, e.g. for tainted GPU nodes."""

    key: str | None = Field(default=None, max_length=316, description="Taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="How long a NoExecute taint is tolerated."
    )


class ResourcesSpec(ApiModel):
    """What the training pod asks of the cluster."""

    gpus: int = Field(default=1, ge=0, le=64, description="nvidia.com/gpu per pod; 0 trains on CPU.")
    cpu: str | None = Field(
        default=None, max_length=32, pattern=QUANTITY, description="CPU request and limit."
    )
    memory: str | None = Field(
        default=None, max_length=32, pattern=QUANTITY, description="Memory request and limit (e.g. 16Gi)."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="Node labels the pod must match."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Tolerations.")
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN, description="PriorityClass of the pod."
    )
    image: str = Field(
        default=DEFAULT_TRAINER_IMAGE, min_length=1, max_length=512, description="Trainer container image."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy."
    )


class RunPolicy(ApiModel):
    """Retries, deadlines, clean-up and suspension, mapped onto the training Job."""

    backoff_limit: int = Field(
        default=3, ge=0, le=100, description="Retries after retryable failures (not after bad data)."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job when it has run this long."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the finished TransferJob (and its Job) after this long."
    )
    pending_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail the job (reason PendingTimeout) when its training pod has not started running "
        "this long after the training Job was created: a missing volume, image or GPU then ends the job "
        "instead of leaving it Pending. Empty: wait as long as it takes.",
    )
    suspend: bool = Field(
        default=False, description="Suspend: delete running pods, resume later from the last checkpoint."
    )


_IMMUTABLE_SPEC = (
    "self.mode == oldSelf.mode && self.model == oldSelf.model && self.data == oldSelf.data && "
    "self.training == oldSelf.training && self.output == oldSelf.output && "
    "self.resources == oldSelf.resources && self.runPolicy.backoffLimit == oldSelf.runPolicy.backoffLimit"
)


class TransferJobSpec(ApiModel):
    """What to train. Immutable once created, except runPolicy's suspend, deadlines and TTL."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.mode == 'FineTuning' || !has(self.model.fromJob)",
                    "model.fromJob is only allowed with mode FineTuning",
                    ".model.fromJob",
                ),
                cel(
                    "self.mode == 'FineTuning' || !has(self.model.fromModel)",
                    "model.fromModel is only allowed with mode FineTuning",
                    ".model.fromModel",
                ),
                cel(
                    "self.mode == 'FineTuning' || !has(self.model.fineTuneAt)",
                    "model.fineTuneAt is only allowed with mode FineTuning",
                    ".model.fineTuneAt",
                ),
                cel(
                    _IMMUTABLE_SPEC,
                    "spec is immutable except runPolicy.suspend, runPolicy.activeDeadlineSeconds, "
                    "runPolicy.pendingTimeoutSeconds and runPolicy.ttlSecondsAfterFinished; delete and recreate the TransferJob instead",
                    reason="FieldValueForbidden",
                ),
            ]
        }
    )

    mode: Mode = Field(
        default=Mode.FEATURE_EXTRACTION,
        description="FeatureExtraction trains a new head on the frozen base; FineTuning also trains the "
        "base's last layers with a very small learning rate.",
    )
    model: ModelSpec = Field(default_factory=ModelSpec, description="Base network, weights and head.")
    data: DataSpec = Field(description="The labelled images.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    output: OutputSpec = Field(description="Where results go.")
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Pod resources and placement."
    )
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Retries, deadline, TTL, suspend.")

    @model_validator(mode="after")
    def _mode_rules_and_defaults(self) -> TransferJobSpec:
        fine_tuning = self.mode is Mode.FINE_TUNING
        if not fine_tuning:
            for name, value in (
                ("fromJob", self.model.from_job),
                ("fromModel", self.model.from_model),
                ("fineTuneAt", self.model.fine_tune_at),
            ):
                if value is not None:
                    raise ValueError(f"model.{name} is only allowed with mode FineTuning")
        defaults = _FINE_TUNING_DEFAULTS if fine_tuning else _FEATURE_EXTRACTION_DEFAULTS
        if self.training.epochs is None:
            self.training.epochs = int(defaults["epochs"])
        if self.training.learning_rate is None:
            self.training.learning_rate = float(defaults["learning_rate"])
        if fine_tuning and self.model.fine_tune_at is None:
            info = BASES.get(self.model.base)
            if info is None or info.fine_tune_at is None:
                raise ValueError(
                    f"model.fineTuneAt is required to fine-tune {self.model.base!r}: there is no default "
                    "layer for it"
                )
            self.model.fine_tune_at = info.fine_tune_at
        return self


# ------------------------------------------------------------------------------------------- status


class Condition(ApiModel):
    """A Kubernetes-style condition; `kubectl wait --for=condition=Succeeded` reads these."""

    type: str = Field(description="Succeeded, Failed, Running, Suspended, Unschedulable, ...")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason, e.g. InvalidData or OOMKilled.")
    message: str = Field(default="", description="What happened, for a person.")
    last_transition_time: dt.datetime | None = Field(default=None, description="When status last changed.")
    observed_generation: int | None = Field(
        default=None, description="Spec generation this was computed for."
    )


def _significant(value: float) -> float:
    """Four significant digits, as Keras prints them: `kubectl get tj` shows 0.9478, not 0.947761178."""
    return float(f"{value:.4g}") if math.isfinite(value) else value


def _finite_or_none(value: float | None) -> float | None:
    """A NaN or infinite metric (a diverged epoch) is reported as missing: JSON cannot carry it."""
    return None if value is None or not math.isfinite(value) else _significant(value)


#: A metric as stored on `.status` and sent in progress lines.
Metric = Annotated[float, AfterValidator(_significant)]
OptionalMetric = Annotated[float | None, AfterValidator(_finite_or_none)]


class EpochMetrics(ApiModel):
    """Metrics of one finished epoch, as Keras reported them."""

    epoch: int = Field(ge=1, description="Epoch number, from 1.")
    loss: OptionalMetric = Field(default=None, description="Training loss.")
    accuracy: OptionalMetric = Field(default=None, description="Training accuracy.")
    val_loss: OptionalMetric = Field(default=None, description="Validation loss.")
    val_accuracy: OptionalMetric = Field(default=None, description="Validation accuracy.")
    learning_rate: OptionalMetric = Field(default=None, description="Learning rate in effect.")
    seconds: OptionalMetric = Field(default=None, description="Wall time of the epoch.")


class ClassMetrics(ApiModel):
    """Test-set precision and recall of one class."""

    name: str = Field(description="Class (sub-folder) name.")
    precision: Metric = Field(description="Of images predicted as this class, the fraction that are.")
    recall: Metric = Field(description="Of images of this class, the fraction found.")
    support: int = Field(description="Test images of this class.")


class TestMetrics(ApiModel):
    """The final evaluation on the test set, with the best weights."""

    __test__ = False  # not a pytest test class

    loss: Metric = Field(description="Test loss.")
    accuracy: Metric = Field(description="Test accuracy.")
    per_class: list[ClassMetrics] = Field(default_factory=list, description="Per-class precision/recall.")
    confusion_matrix: list[list[int]] = Field(
        default_factory=list, description="Rows: true class; columns: predicted class."
    )


class ModelArtifacts(ApiModel):
    """Where the trainer exported its results."""

    uri: str = Field(description="The exported Keras model (.keras).")
    saved_model_uri: str | None = Field(default=None, description="The TensorFlow SavedModel, for serving.")
    tensorboard_uri: str | None = Field(default=None, description="TensorBoard logs.")
    metrics_uri: str | None = Field(
        default=None, description="Full per-epoch history and test metrics (JSON)."
    )


class TransferJobStatus(ApiModel):
    """What the operator observed. Written only through the status subresource."""

    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded, Failed or Suspended.")
    conditions: list[Condition] = Field(default_factory=list, description="Conditions, one per type.")
    start_time: dt.datetime | None = Field(default=None, description="When the training Job started.")
    completion_time: dt.datetime | None = Field(default=None, description="When it succeeded or failed.")
    job_name: str | None = Field(default=None, description="The child batch/v1 Job.")
    epoch: int | None = Field(default=None, description="Last finished epoch.")
    epochs: int | None = Field(default=None, description="Epochs planned.")
    metrics: EpochMetrics | None = Field(default=None, description="The latest epoch's metrics.")
    history: list[EpochMetrics] = Field(
        default_factory=list,
        max_length=HISTORY_LIMIT,
        description=f"Per-epoch metrics, the newest {HISTORY_LIMIT}; the full curve is in the output.",
    )
    best_epoch: int | None = Field(default=None, description="Epoch whose weights were kept.")
    test: TestMetrics | None = Field(default=None, description="Test-set evaluation of the final model.")
    model: ModelArtifacts | None = Field(default=None, description="Exported model and logs.")
    restarts: int | None = Field(default=None, description="Training pods that failed and were replaced.")
    observed_generation: int | None = Field(default=None, description="Spec generation last acted on.")


# ------------------------------------------------------------------------------------------ object


class ObjectMeta(ApiModel):
    """The parts of Kubernetes metadata the SDK sets or reads; the rest passes through."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    generate_name: str | None = Field(default=None, max_length=58)
    namespace: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: dt.datetime | None = None


class TransferJob(ApiModel):
    """A TransferJob resource: what the SDK submits and what `kubectl get tj -o yaml` shows."""

    api_version: Literal["transferjob.io/v1alpha1"] = API_VERSION
    kind: Literal["TransferJob"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TransferJobSpec
    status: TransferJobStatus | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> TransferJob:
        """Parse a manifest or an API object (the operator and SDK read stored objects this way)."""
        return cls.model_validate(obj)

    @classmethod
    def from_yaml(cls, text: str) -> TransferJob:
        """Parse one YAML document."""
        return cls.from_dict(yaml.safe_load(text))

    def to_yaml(self) -> str:
        """The manifest as `kubectl apply -f` takes it."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def describe_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """Turn pydantic's errors into `spec.training.learningRate: must be > 0` style lines.

    Locations are reported with the wire (camelCase) names, since that is what users write in YAML.
    """
    lines = []
    for item in error.errors():
        parts = [prefix] if prefix else []
        for part in item["loc"]:
            if isinstance(part, int):
                parts[-1:] = [f"{parts[-1] if parts else ''}[{part}]"]
            elif part in ("int", "str") or str(part).startswith("function-"):
                continue  # pydantic's union-member and validator tags, not fields
            else:
                parts.append(to_camel(part) if "_" in part else part)
        where = ".".join(parts) or "spec"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return lines


def parse_spec(obj: dict[str, Any], prefix: str = "spec") -> TransferJobSpec:
    """Validate a spec dict, raising `SpecError` whose lines name each bad field."""
    try:
        return TransferJobSpec.model_validate(obj)
    except ValidationError as error:
        raise SpecError(describe_validation_error(error, prefix)) from error
