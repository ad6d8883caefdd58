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

import contextlib
import datetime as dt
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from functools import partial
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Self, Union, get_args, get_origin

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
from pydantic_core import PydanticCustomError

from transferjob import yamlio
from transferjob.bases import BASES, MAX_IMAGE_SIZE, SAVED_MODEL_SUFFIXES, BaseInfo
from transferjob.constants import (
    API_VERSION,
    DEFAULT_TRAINER_IMAGE,
    HISTORY_LIMIT,
    KIND,
    STATUS_CLASS_LIMIT,
    STATUS_WORST_CLASSES,
)
from transferjob.errors import SpecError, SpecWarning

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A path inside a volume or data folder: relative, no leading or trailing `/`.
RELATIVE_PATH = r"^$|^[^/](.*[^/])?$"
#: A Kubernetes resource quantity, never negative (`16Gi`, `500m`, `2`, `1e9`).
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][-+]?[0-9]+)?$"
#: Where the trainer reads a single file (base, weights, fromModel): object stores, `file://`, and plain
#: `https://`, which cannot list a folder (so it serves files only).
FILE_URI_SCHEMES = ("s3", "gs", "https", "file")
#: Where it reads and writes folders (data, output): the same but `https://`, or an absolute path.
FOLDER_URI = rf"^(({'|'.join(s for s in FILE_URI_SCHEMES if s != 'https')})://|/)"
#: An absolute path or a URI of a supported scheme and a safe shape: no spaces, quotes or shell characters.
SAFE_PATH_OR_URI = rf"^(/|({'|'.join(FILE_URI_SCHEMES)})://)[A-Za-z0-9._~+=,@%/-]+$"
#: An S3-compatible endpoint: scheme, host and port, nothing after.
ENDPOINT_URL = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$"
#: A Keras layer name, as `fineTuneAt` names one.
LAYER_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_./:-]*$"
#: Weights files Keras loads into an applications network.
WEIGHTS_SUFFIXES = (".h5", ".hdf5")

_FEATURE_EXTRACTION_DEFAULTS = {"epochs": 5, "learning_rate": 1e-4}
_FINE_TUNING_DEFAULTS = {"epochs": 10, "learning_rate": 1e-5}


@dataclass(frozen=True)
class Rule:
    """One rule across fields, written once and rendered twice.

    `cel` goes into the CRD (`x-kubernetes-validations`), so the API server enforces it at admission;
    `check` is the same condition in Python, on the validated model, so the SDK gives the same verdict
    before submitting. Both sit side by side here, and a property-based test
    (tests/cluster/test_spec_parity.py) feeds thousands of specs to the models and to a real API server
    and fails on any spec where they disagree. A transition rule (`oldSelf`) has no `check`: it only
    exists on update, which only the API server sees.
    """

    cel: str
    message: str
    check: Callable[[Any], bool] | None = None
    field: str | None = None
    reason: str | None = None

    def schema(self) -> JsonDict:
        """The `x-kubernetes-validations` entry."""
        entry: JsonDict = {"rule": self.cel, "message": self.message}
        if self.field:
            entry["fieldPath"] = self.field
        if self.reason:
            entry["reason"] = self.reason
        return entry


def _rules_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """Render a model's `rules` into its JSON schema, for `transferjob.crd`."""
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.schema() for r in rules]


def _is_layer_name(value: str) -> bool:
    return re.fullmatch(LAYER_NAME, value) is not None


def _plain_relative_field(field: str, model: Any) -> bool:
    return all(part not in ("", ".", "..") for part in getattr(model, field).split("/"))


def _imagenet_size_ok(base: BaseInfo, model: Any) -> bool:
    return model.base != base.name or model.weights != "imagenet" or model.image_size in base.imagenet_sizes


def _min_size_ok(base: BaseInfo, model: Any) -> bool:
    return bool(model.base != base.name or model.image_size >= base.min_size)


def _fine_tuning_only(field: str, spec: Any) -> bool:
    return bool(spec.mode is Mode.FINE_TUNING or getattr(spec.model, field) is None)


def cel_list(values: Any) -> str:
    """A Python list of strings or ints as a CEL list literal."""
    return "[" + ", ".join(f"'{v}'" if isinstance(v, str) else str(v) for v in values) + "]"


def no_dot_segments(value: str) -> bool:
    """No `..` path segment: the Python twin of CEL's `!('..' in value.split('/'))`."""
    return ".." not in value.split("/")


def safe_file(value: str, suffixes: tuple[str, ...]) -> bool:
    """An absolute path or URI of a safe shape, without `..`, ending in one of `suffixes`."""
    return (
        re.fullmatch(SAFE_PATH_OR_URI, value) is not None
        and no_dot_segments(value)
        and value.endswith(suffixes)
    )


def safe_file_cel(field: str, suffixes: tuple[str, ...]) -> str:
    """CEL for `safe_file`."""
    ends = " || ".join(f"{field}.endsWith('{s}')" for s in suffixes)
    return f"({field}.matches('{SAFE_PATH_OR_URI}') && !('..' in {field}.split('/')) && ({ends}))"


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, snake_case in Python, one verdict with the API server.

    The SDK must accept exactly what `kubectl apply` accepts, so validation follows the API server's
    structural schema rather than pydantic's habits: strict types (`"5"` is not an integer, `"yes"` not a
    boolean, `5.0` not an integer; an integer is a number), unknown fields rejected (`learnigRate`: the
    API server rejects them under strict field validation, `kubectl`'s default), `null` for a field that
    is not nullable treated as left out (the API server prunes it, then defaults it), and each model's
    `rules` checked in Python exactly as their CEL twins are at admission.

    Every way of building one (`Model(...)`, `model_validate`, `model_validate_json`, and through them
    `TransferJob.from_dict`/`from_yaml`) raises `SpecError` with one line per problem naming the wire
    path, never pydantic's `ValidationError` (kept as the `__cause__`).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        strict=True,
        json_schema_extra=_rules_schema,
    )

    #: Rules across this model's fields; see `Rule`.
    rules: ClassVar[tuple[Rule, ...]] = ()
    #: Integer fields that a CEL rule reads: there the API server's schema takes `224.0` as an integer
    #: but the rule then fails on the float ("expected int, got float64"), so a whole float is refused.
    cel_ints: ClassVar[frozenset[str]] = frozenset()
    #: Where this model sits in a TransferJob (`spec`), the prefix of its `SpecError` lines; empty for a
    #: model found at several places, whose lines then start at its own fields.
    wire_path: ClassVar[str] = ""

    def __init__(self, /, **data: Any) -> None:
        with spec_errors(type(self).wire_path, type(self).__name__):
            super().__init__(**data)

    # pydantic calls a model's own `__init__` for every nested model it validates unless the method is
    # marked as its base one; nested models are part of the outer model's one validation, so they must
    # not raise a `SpecError` of their own.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        with spec_errors(cls.wire_path, cls.__name__):
            return super().model_validate(obj, *args, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, *args: Any, **kwargs: Any) -> Self:
        with spec_errors(cls.wire_path, cls.__name__):
            return super().model_validate_json(json_data, *args, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _as_the_api_server_decodes(cls, data: Any) -> Any:
        """Read the input as the API server does before validating it.

        `null` for a field that is not nullable is dropped (the API server prunes it, then defaults it),
        and a whole float where an integer goes is that integer (`5.0` passes an `integer` schema there),
        except in `cel_ints`.
        """
        if not isinstance(data, dict):
            return data
        decoded = {}
        for key, value in data.items():
            field = cls.model_fields.get(key) or next(
                (f for f in cls.model_fields.values() if f.alias == key), None
            )
            if field is not None:
                if value is None and not _admits(field.annotation, type(None)):
                    continue
                if key in cls.cel_ints or field.alias in cls.cel_ints:
                    pass
                elif _admits(field.annotation, int) and not _admits(field.annotation, float):
                    value = _whole_to_int(value)
                elif isinstance(value, list) and _admits_list_of_int(field.annotation):
                    value = [_whole_to_int(v) for v in value]
            decoded[key] = value
        return decoded

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in type(self).rules:
            if rule.check is not None and not rule.check(self):
                raise PydanticCustomError("rule", rule.message, {"field": rule.field or ""})
        return self

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase keys, no empty optionals, JSON types only."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _members(annotation: Any) -> list[Any]:
    """The types a field's annotation admits: `int | None` -> [int, NoneType]; Annotated unwrapped."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [type(None) if annotation is None else annotation]


def _admits(annotation: Any, kind: type) -> bool:
    return kind in _members(annotation)


def _admits_list_of_int(annotation: Any) -> bool:
    return any(get_origin(m) is list and _admits(get_args(m)[0], int) for m in _members(annotation))


def _whole_to_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


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

    rules = (
        Rule(
            "!has(self.subPath) || !('..' in self.subPath.split('/'))",
            "subPath must not contain '..' segments",
            lambda m: no_dot_segments(m.sub_path),
            ".subPath",
        ),
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


class Location(ApiModel):
    """Where files live: exactly one of a PVC, a node path or a URI the trainer can read."""

    rules = (
        Rule(
            "(has(self.pvc) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
            "exactly one of pvc, hostPath or uri must be set",
            lambda m: sum(v is not None for v in (m.pvc, m.host_path, m.uri)) == 1,
        ),
        Rule(
            "!has(self.hostPath) || !('..' in self.hostPath.split('/'))",
            "hostPath must not contain '..' segments",
            lambda m: m.host_path is None or no_dot_segments(m.host_path),
            ".hostPath",
        ),
        Rule(
            "!has(self.uri) || !('..' in self.uri.split('/'))",
            "uri must not contain '..' segments",
            lambda m: m.uri is None or no_dot_segments(m.uri),
            ".uri",
        ),
        Rule(
            f"!has(self.uri) || self.uri.matches('{FOLDER_URI}')",
            "uri must be s3://bucket/folder, gs://bucket/folder, file:///folder or an absolute path: no "
            "other scheme is supported (https:// serves single files only: model.base, model.weights, "
            "model.fromModel)",
            lambda m: m.uri is None or re.match(FOLDER_URI, m.uri) is not None,
            ".uri",
        ),
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
        description="An object-store folder (s3://bucket/folder on AWS or any S3-compatible store, "
        "gs://bucket/folder), a file:// URI or an absolute path inside the trainer's container. "
        "Credentials and the S3 endpoint: spec.storage.",
    )


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

    rules = (
        Rule(
            f"self.base in {cel_list(sorted(BASES))} || {safe_file_cel('self.base', SAVED_MODEL_SUFFIXES)}",
            "base must be a keras.applications network name (MobileNetV2, VGG16, ResNet50, ...) or the "
            "absolute path or URI (s3://, gs://, https://, file://) of a saved Keras model ending in "
            ".keras, .h5 or .hdf5, without '..' segments, spaces or shell characters",
            lambda m: m.base in BASES or safe_file(m.base, SAVED_MODEL_SUFFIXES),
            ".base",
        ),
        Rule(
            f"self.weights in ['imagenet', 'none'] || {safe_file_cel('self.weights', WEIGHTS_SUFFIXES)}",
            "weights must be imagenet, none, or the absolute path or URI (s3://, gs://, https://, "
            "file://) of a weights file ending in .h5 or .hdf5, without '..' segments, spaces or shell "
            "characters",
            lambda m: m.weights in ("imagenet", "none") or safe_file(m.weights, WEIGHTS_SUFFIXES),
            ".weights",
        ),
        Rule(
            f"!has(self.fromModel) || {safe_file_cel('self.fromModel', SAVED_MODEL_SUFFIXES)}",
            "fromModel must be the absolute path or URI (s3://, gs://, https://, file://) of a saved Keras "
            "model ending in .keras, .h5 or .hdf5, without '..' segments, spaces or shell characters",
            lambda m: m.from_model is None or safe_file(m.from_model, SAVED_MODEL_SUFFIXES),
            ".fromModel",
        ),
        Rule(
            # Reads imageSize on every spec, so that `224.0` fails here for every base (the schema alone
            # takes it as an integer; the rules below read imageSize only for some bases).
            "int(self.imageSize) == self.imageSize",
            "imageSize must be a whole number of pixels, written without a decimal point",
            lambda m: type(m.image_size) is int,
            ".imageSize",
        ),
        Rule(
            "!has(self.weightsCache) || !has(self.weightsCache.uri)",
            "weightsCache must be a pvc or a hostPath: Keras reads and writes its cache as local files",
            lambda m: m.weights_cache is None or m.weights_cache.uri is None,
            ".weightsCache",
        ),
        Rule(
            "!(has(self.fromJob) && has(self.fromModel))",
            "fromJob and fromModel are mutually exclusive",
            lambda m: m.from_job is None or m.from_model is None,
            ".fromJob",
        ),
        Rule(
            "!has(self.fineTuneAt) || (type(self.fineTuneAt) == int ? self.fineTuneAt >= 0 : "
            f"self.fineTuneAt.matches('{LAYER_NAME}'))",
            "fineTuneAt must be a layer index >= 0 or a layer name (letters, digits, _ . / : -)",
            lambda m: (
                m.fine_tune_at is None
                or (
                    m.fine_tune_at >= 0 if isinstance(m.fine_tune_at, int) else _is_layer_name(m.fine_tune_at)
                )
            ),
            ".fineTuneAt",
        ),
        *[
            Rule(
                f"self.base != '{b.name}' || self.weights != 'imagenet' || "
                f"self.imageSize in {cel_list(b.imagenet_sizes)}",
                f"imageSize must be one of {list(b.imagenet_sizes)} for {b.name} with imagenet weights",
                partial(_imagenet_size_ok, b),
                ".imageSize",
            )
            for b in BASES.values()
            if b.imagenet_sizes
        ],
        *[
            Rule(
                f"self.base != '{b.name}' || self.imageSize >= {b.min_size}",
                f"imageSize must be at least {b.min_size} for {b.name}",
                partial(_min_size_ok, b),
                ".imageSize",
            )
            for b in BASES.values()
            if b.min_size > 32
        ],
    )

    cel_ints = frozenset({"imageSize", "fineTuneAt"})

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
    weights_cache: Location | None = Field(
        default=None,
        description="A folder (pvc or hostPath, mounted read-write) that Keras keeps downloaded weights in, "
        "as under KERAS_HOME (files in its models/ sub-folder): imagenet weights found there are loaded "
        "without any download, missing ones are downloaded into it once for every later job. Pre-seed it "
        "for clusters without internet access.",
    )


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

    rules = (
        *[
            Rule(
                f"self.{d}.split('/').all(p, p != '' && p != '.' && p != '..')",
                f"{d} must be a relative path of plain folder names (no '/' at either end, no '.' or '..')",
                partial(_plain_relative_field, f),
                f".{d}",
            )
            for d, f in (("trainDir", "train_dir"), ("valDir", "val_dir"), ("testDir", "test_dir"))
        ],
        Rule(
            "self.trainDir != self.valDir && self.trainDir != self.testDir && self.valDir != self.testDir",
            "trainDir, valDir and testDir must be three different folders: a model validated or tested "
            "on its own training images says nothing about new ones",
            lambda m: len({m.train_dir, m.val_dir, m.test_dir}) == 3,
            ".valDir",
        ),
        Rule(
            "!has(self.classNames) || self.classNames.all(c, c != '.' && c != '..')",
            "classNames entries must be folder names, not '.' or '..'",
            lambda m: m.class_names is None or not {".", ".."} & set(m.class_names),
            ".classNames",
        ),
    )

    source: Location = Field(description="Where the image folders are; mounted read-only.")
    train_dir: str = Field(default="train", min_length=1, max_length=512, description="Training images.")
    val_dir: str = Field(default="val", min_length=1, max_length=512, description="Validation images.")
    test_dir: str = Field(default="test", min_length=1, max_length=512, description="Test images.")
    class_names: list[Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^/]+$")]] | None = Field(
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
    skip_invalid_images: bool = Field(
        default=False,
        description="Leave out image files that cannot be decoded instead of failing the job (InvalidData); "
        "they are named in the trainer's log and counted in .status.skippedImages.",
    )
    max_invalid_fraction: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="With skipInvalidImages: fail as InvalidData all the same when more than this fraction "
        "of the image files cannot be decoded (a broken copy of the data, not a few bad files).",
    )

    @field_validator("class_names")
    @classmethod
    def _classes_distinct(cls, value: list[str] | None) -> list[str] | None:
        # The API server's twin is the CRD's `x-kubernetes-list-type: set` (a "Duplicate value" error).
        if value is not None and len(set(value)) != len(value):
            raise ValueError("classNames must not repeat a class")
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


#: What a job does with an output location another TransferJob owns (`OutputSpec.ownership_policy`).
OwnershipPolicy = Literal["Exclusive", "Adopt"]


class OutputSpec(ApiModel):
    """Where the exported model, checkpoints, metrics and TensorBoard logs go."""

    location: Location = Field(
        description="Written by the trainer; checkpoints here make runs resumable. The trainer records the "
        "TransferJob that owns it (owner.json): a retry of the same job resumes there, another job fails "
        "with OutputInUse unless ownershipPolicy is Adopt."
    )
    ownership_policy: OwnershipPolicy = Field(
        default="Exclusive",
        description="What the job does when its location is owned by another TransferJob (owner.json names "
        "a different uid): Exclusive fails it at once (reason OutputInUse), so no job overwrites or "
        "silently reuses another's model; Adopt takes the location over, resuming from its checkpoint "
        "when the settings and data match (else training anew over it). Reading another job's model "
        "(model.fromJob, model.fromModel) needs neither.",
    )
    saved_model: bool = Field(default=True, description="Also export a TensorFlow SavedModel for serving.")
    tensorboard: bool = Field(default=True, description="Write TensorBoard logs under tensorboard/.")


class StorageSpec(ApiModel):
    """How the trainer reaches the object stores its locations name (s3://, gs://).

    One block for the whole job, not one per location: the clients read one set of standard environment
    variables (AWS_*, GOOGLE_*), so a job has one identity, as any pod running the AWS or Google tools.
    """

    secret_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="A Secret in the TransferJob's namespace whose keys become the trainer's environment "
        "(envFrom; the operator never reads it): AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally "
        "AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_REGION for s3://; GOOGLE_SERVICE_ACCOUNT_KEY (the JSON "
        "key) for gs://. Empty: the pod's own identity (node role, workload identity) or anonymous.",
    )
    endpoint_url: str | None = Field(
        default=None,
        alias="endpointURL",  # Kubernetes spells acronyms in capitals (podIP, hostIP)
        max_length=512,
        pattern=ENDPOINT_URL,
        description="The endpoint of an S3-compatible store (MinIO, Ceph RGW, versitygw, ...): "
        "http(s)://host[:port]. Empty: AWS_ENDPOINT_URL from the Secret, else AWS S3.",
    )
    region: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z0-9-]+$",
        description="The S3 region (us-east-1 when neither this nor AWS_REGION is set).",
    )


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

    # The API server's integer schema takes a whole float (`2.0`), which a CEL rule cannot compare with
    # an int: this rule makes the API server refuse it at `spec.resources`, as the SDK does (`cel_ints`),
    # instead of admitting a number of pods written as a float.
    rules = (
        Rule(
            "self.workers >= 1",
            "resources.workers is a whole number of pods, at least 1 (write 2, not 2.0)",
            lambda m: m.workers >= 1,
            ".workers",
        ),
    )
    cel_ints = frozenset({"workers"})

    gpus: int = Field(default=1, ge=0, le=64, description="nvidia.com/gpu per pod; 0 trains on CPU.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Pods that train together, data-parallel: an Indexed Job of this many pods behind a "
        "headless Service, with MultiWorkerMirroredStrategy. Each worker reads its own share of the images "
        "(in feature extraction it computes the features of its share and trains the head on them, the "
        "head's gradients summed across workers); training.batchSize is per worker, so the global batch "
        "is batchSize x workers. gpus, cpu and memory are per worker. The output location must be "
        "readable by every worker (an object store, or a claim every node can mount).",
    )
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
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Trainer container image. Unset: the operator's default (its --trainer-image, "
        f"{DEFAULT_TRAINER_IMAGE} unless the platform team points it at its own registry).",
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
    "self.resources == oldSelf.resources && self.runPolicy.backoffLimit == oldSelf.runPolicy.backoffLimit && "
    "has(self.storage) == has(oldSelf.storage) && (!has(self.storage) || self.storage == oldSelf.storage)"
)


class TransferJobSpec(ApiModel):
    """What to train. Immutable once created, except runPolicy's suspend, deadlines and TTL."""

    wire_path = "spec"

    rules = (
        *[
            Rule(
                f"self.mode == 'FineTuning' || !has(self.model.{name})",
                f"model.{name} is only allowed with mode FineTuning",
                partial(_fine_tuning_only, f),
                f".model.{name}",
            )
            for name, f in (
                ("fromJob", "from_job"),
                ("fromModel", "from_model"),
                ("fineTuneAt", "fine_tune_at"),
            )
        ],
        Rule(
            "self.mode != 'FineTuning' || has(self.model.fineTuneAt) || "
            f"self.model.base in {cel_list(sorted(b.name for b in BASES.values() if b.fine_tune_at))}",
            "model.fineTuneAt is required to fine-tune this base: there is no default layer for it (a saved "
            "model, NASNet)",
            lambda m: (
                m.mode is not Mode.FINE_TUNING
                or m.model.fine_tune_at is not None
                or (m.model.base in BASES and BASES[m.model.base].fine_tune_at is not None)
            ),
            ".model.fineTuneAt",
        ),
        Rule(
            _IMMUTABLE_SPEC,
            "spec is immutable except runPolicy.suspend, runPolicy.activeDeadlineSeconds, "
            "runPolicy.pendingTimeoutSeconds and runPolicy.ttlSecondsAfterFinished; delete and recreate the "
            "TransferJob instead",
            reason="FieldValueForbidden",
        ),
    )

    mode: Mode = Field(
        default=Mode.FEATURE_EXTRACTION,
        strict=False,  # the enum's values, as strings
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
    storage: StorageSpec | None = Field(
        default=None, description="Credentials and endpoint for s3:// and gs:// locations."
    )

    def warnings(self) -> list[SpecWarning]:
        """What in this valid spec will not do what it is for: the SDK warns at submission, the trainer in
        its log and the operator with a Warning Event. Never a reason to refuse the spec."""
        found = []
        model = self.model
        if model.base in BASES and model.weights == "none" and not (model.from_job or model.from_model):
            frozen = (
                "all of them"
                if self.mode is Mode.FEATURE_EXTRACTION
                else "BatchNorm and those before fineTuneAt"
            )
            found.append(
                SpecWarning(
                    "UntrainedBase",
                    "spec.model.weights",
                    f"none leaves {model.base} untrained, and its frozen layers ({frozen}) keep their "
                    "random weights, so the job learns little or nothing (MobileNetV2 at 32 px: features "
                    "near 1e-12, the loss stays at ln(classes), test accuracy at chance); set weights: "
                    "imagenet or a weights file, or make model.base a pretrained saved model (python -m "
                    "transferjob_trainer.pretrain trains a small one)",
                )
            )
        return found

    @model_validator(mode="after")
    def _mode_defaults(self) -> TransferJobSpec:
        """Resolve the defaults that depend on the mode (runs after `rules`, which see the input)."""
        fine_tuning = self.mode is Mode.FINE_TUNING
        defaults = _FINE_TUNING_DEFAULTS if fine_tuning else _FEATURE_EXTRACTION_DEFAULTS
        if self.training.epochs is None:
            self.training.epochs = int(defaults["epochs"])
        if self.training.learning_rate is None:
            self.training.learning_rate = float(defaults["learning_rate"])
        if fine_tuning and self.model.fine_tune_at is None:
            self.model.fine_tune_at = BASES[self.model.base].fine_tune_at
        return self


# ------------------------------------------------------------------------------------------- status


class Condition(ApiModel):
    """A Kubernetes-style condition; `kubectl wait --for=condition=Succeeded` reads these."""

    type: str = Field(description="Succeeded, Failed, Running, Suspended, Unschedulable, ...")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason, e.g. InvalidData or OOMKilled.")
    message: str = Field(default="", description="What happened, for a person.")
    last_transition_time: dt.datetime | None = Field(
        default=None, strict=False, description="When status last changed."
    )
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
    classes: int | None = Field(default=None, description="Number of classes.")
    per_class: list[ClassMetrics] = Field(
        default_factory=list,
        description=f"Per-class precision/recall: every class, or with more than {STATUS_CLASS_LIMIT} "
        f"classes the {STATUS_WORST_CLASSES} with the lowest recall (all of them are in metrics.json).",
    )
    confusion_matrix: list[list[int]] = Field(
        default_factory=list,
        description=f"Rows: true class; columns: predicted class. Up to {STATUS_CLASS_LIMIT} classes "
        "(beyond, in metrics.json only).",
    )

    def summary(self) -> TestMetrics:
        """What `.status` keeps: everything up to `STATUS_CLASS_LIMIT` classes, else a bounded summary."""
        if len(self.per_class) <= STATUS_CLASS_LIMIT and len(self.confusion_matrix) <= STATUS_CLASS_LIMIT:
            return self
        worst = sorted(self.per_class, key=lambda c: (c.recall, c.name))[:STATUS_WORST_CLASSES]
        return self.model_copy(update={"per_class": worst, "confusion_matrix": []})


class ModelArtifacts(ApiModel):
    """Where the trainer exported its results."""

    uri: str = Field(description="The exported Keras model (.keras).")
    saved_model_uri: str | None = Field(
        default=None,
        description="The TensorFlow SavedModel for serving: the base folder a server loads (the model is "
        "in its version folder 1/).",
    )
    tensorboard_uri: str | None = Field(default=None, description="TensorBoard logs.")
    metrics_uri: str | None = Field(
        default=None, description="Full per-epoch history and test metrics (JSON)."
    )


class StepProgressStatus(ApiModel):
    """How far the step under way has got, from the trainer's `progress` events (about every 10 s)."""

    step: str = Field(description="loading (the image check), features or training.")
    percent: float = Field(description="Share of the step done, 0-100 (training: of the current epoch).")
    epoch: int | None = Field(default=None, description="The epoch under way, when training.")
    images_per_second: float | None = Field(default=None, description="Throughput of the step so far.")
    remaining_seconds: int | None = Field(
        default=None,
        description="Estimated seconds until the step ends (training: until the last planned epoch ends; "
        "early stopping may end it sooner).",
    )


class WorkerStatus(ApiModel):
    """One worker of a group (`resources.workers` > 1): its current pod and how often its pods failed."""

    index: int = Field(ge=0, description="The worker's index (0 is the chief, which reports the metrics).")
    pod: str = Field(description="Its newest pod (the last one seen, once its pods are gone).")
    phase: str = Field(
        description="That pod's phase (Pending, Running, Succeeded, Failed), or Removed when the pod was "
        "deleted before it finished (the Job stops the others once the chief succeeds)."
    )
    failures: int = Field(default=0, ge=0, description="Pods of this worker that failed (each was replaced).")


class TransferJobStatus(ApiModel):
    """What the operator observed. Written only through the status subresource."""

    wire_path = "status"

    phase: Phase | None = Field(
        default=None, strict=False, description="Pending, Running, Succeeded, Failed or Suspended."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Conditions, one per type.")
    start_time: dt.datetime | None = Field(
        default=None, strict=False, description="When the training Job started."
    )
    completion_time: dt.datetime | None = Field(
        default=None, strict=False, description="When it succeeded or failed."
    )
    job_name: str | None = Field(default=None, description="The child batch/v1 Job.")
    epoch: int | None = Field(default=None, description="Last finished epoch.")
    epochs: int | None = Field(default=None, description="Epochs planned.")
    metrics: EpochMetrics | None = Field(default=None, description="The latest epoch's metrics.")
    progress: StepProgressStatus | None = Field(
        default=None, description="How far the step under way has got, while Running."
    )
    history: list[EpochMetrics] = Field(
        default_factory=list,
        max_length=HISTORY_LIMIT,
        description=f"Per-epoch metrics, the newest {HISTORY_LIMIT}; the full curve is in the output.",
    )
    best_epoch: int | None = Field(default=None, description="Epoch whose weights were kept.")
    test: TestMetrics | None = Field(default=None, description="Test-set evaluation of the final model.")
    model: ModelArtifacts | None = Field(default=None, description="Exported model and logs.")
    restarts: int | None = Field(default=None, description="Training pods that failed and were replaced.")
    workers: list[WorkerStatus] = Field(
        default_factory=list,
        max_length=64,
        description="Each worker's state, by index, when the job runs on several (resources.workers).",
    )
    skipped_images: int | None = Field(
        default=None, description="Image files left out as undecodable (data.skipInvalidImages)."
    )
    skipped_files: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="The first of the skipped files, with why each was skipped.",
    )
    observed_generation: int | None = Field(default=None, description="Spec generation last acted on.")


# ------------------------------------------------------------------------------------------ object


class ObjectMeta(ApiModel):
    """The parts of Kubernetes metadata the SDK sets or reads; the rest passes through."""

    model_config = ConfigDict(extra="allow")
    wire_path = "metadata"

    name: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    generate_name: str | None = Field(default=None, max_length=58)
    namespace: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: dt.datetime | None = Field(default=None, strict=False)


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
        return cls.from_dict(yamlio.load(text))

    def to_yaml(self) -> str:
        """The manifest as `kubectl apply -f` takes it."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def revalidated(self) -> TransferJob:
        """This job validated again from its wire form, as the API server sees it when it is sent.

        Setting an attribute validates nothing (`job.metadata.name = "x" * 64`), so whatever submits a
        job goes through here: a problem is a `SpecError` before anything starts, not a failure later.
        """
        return type(self).model_validate(self.to_dict())


def describe_validation_error(error: ValidationError, prefix: str = "", whole: str = "spec") -> list[str]:
    """Turn pydantic's errors into `spec.training.learningRate: must be > 0` style lines.

    Locations are reported with the wire (camelCase) names, since that is what users write in YAML,
    under `prefix`; a problem of the whole object (a rule across its fields) is reported as `whole`.
    """
    lines = []
    for item in error.errors():
        parts = [prefix] if prefix else []
        # A rule's error sits on its model, never on a union member; its fieldPath follows.
        last = -1 if item["type"] == "rule" else len(item["loc"]) - 1
        for i, part in enumerate(item["loc"]):
            if isinstance(part, int):
                parts[-1:] = [f"{parts[-1] if parts else ''}[{part}]"]
            elif (part in ("int", "str") and i == last) or str(part).startswith("function-"):
                continue  # pydantic's union-member tags (always last: int and str have no fields) and
                # validator tags, not fields; a field named `int` (a sweep's int range) stays
            else:
                parts.append(to_camel(part) if "_" in part else part)
        field = (item.get("ctx") or {}).get("field") if item["type"] == "rule" else None
        if field:  # a rule's fieldPath, as the API server reports it: `.model.fromJob` under `spec`
            parts.extend(rule_field_parts(field))
        where = ".".join(parts) or whole
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return lines


def rule_field_parts(field: str) -> list[str]:
    """A rule's fieldPath as the field names the API server reports: `.a.b` -> [a, b], and a property
    whose name holds dots, which fieldPath quotes, as one name: `['model.head.dropout'].uniform` ->
    [model.head.dropout, uniform] (the API server prints `spec.parameters.model.head.dropout.uniform`)."""
    return [quoted or plain for quoted, plain in re.findall(r"\['([^']*)'\]|\.?([^.\[]+)", field)]


@contextlib.contextmanager
def spec_errors(prefix: str = "", whole: str = "spec") -> Iterator[None]:
    """pydantic's `ValidationError` raised as `SpecError`, in `describe_validation_error`'s lines."""
    try:
        yield
    except ValidationError as error:
        raise SpecError(describe_validation_error(error, prefix, whole)) from error


def parse_spec(obj: dict[str, Any]) -> TransferJobSpec:
    """Validate a spec dict, raising `SpecError` whose lines name each bad field (`spec.…`)."""
    return TransferJobSpec.model_validate(obj)
