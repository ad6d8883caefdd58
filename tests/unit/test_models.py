"""The TransferJob API as users meet it: defaults that reproduce the reference workflow, and bad specs
rejected with a message that names the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from transferjob import Mode, SpecError, TransferJob, TransferSweep
from transferjob.models import parse_spec

ROOT = Path(__file__).resolve().parents[2]


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "data": {"source": {"pvc": {"claimName": "datasets", "subPath": "catsVsDogs"}}},
        "output": {"location": {"pvc": {"claimName": "models"}}},
    }
    spec.update(overrides)
    return spec


def test_minimal_spec_gets_reference_workflow_defaults() -> None:
    spec = parse_spec(minimal_spec())
    assert spec.mode is Mode.FEATURE_EXTRACTION
    assert spec.model.base == "MobileNetV2"
    assert spec.model.weights == "imagenet"
    assert spec.model.image_size == 224
    assert spec.model.head.dropout == 0.2
    assert spec.model.head.pooling == "avg"
    assert spec.training.batch_size == 16
    assert spec.training.optimizer == "adam"
    assert spec.training.learning_rate == 1e-4
    assert spec.training.epochs == 5
    es = spec.training.early_stopping
    assert (es.enabled, es.monitor, es.patience, es.min_delta, es.restore_best_weights) == (
        True,
        "val_loss",
        3,
        1e-3,
        True,
    )
    assert spec.data.augmentation.enabled
    assert spec.resources.gpus == 1
    assert spec.run_policy.backoff_limit == 3
    assert spec.model.fine_tune_at is None


def test_fine_tuning_defaults_to_tiny_learning_rate_and_last_blocks() -> None:
    spec = parse_spec(minimal_spec(mode="FineTuning", model={"fromJob": "cats-dogs-features"}))
    assert spec.training.learning_rate == 1e-5
    assert spec.model.fine_tune_at == "block_13_expand"
    assert spec.training.epochs == 10


def test_explicit_values_win_over_mode_defaults() -> None:
    spec = parse_spec(
        minimal_spec(
            mode="FineTuning",
            model={"fineTuneAt": 100, "fromModel": "/models/fe/model.keras"},
            training={"learningRate": 3e-5, "epochs": 2},
        )
    )
    assert (spec.model.fine_tune_at, spec.training.learning_rate, spec.training.epochs) == (100, 3e-5, 2)


@pytest.mark.parametrize(
    "example", sorted((ROOT / "manifests" / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_examples_parse(example: Path) -> None:
    text = example.read_text()
    if "kind: TransferSweep" in text:
        sweep = TransferSweep.from_yaml(text)
        assert sweep.metadata.name
        assert sweep.spec.template.data.source.pvc is not None
        return
    job = TransferJob.from_yaml(text)
    assert job.metadata.name
    assert job.spec.data.source.pvc is not None


def test_round_trip_through_wire_form() -> None:
    job = TransferJob.from_dict(
        {
            "apiVersion": "transferjob.io/v1alpha1",
            "kind": "TransferJob",
            "metadata": {"name": "x", "namespace": "ml", "uid": "abc", "managedFields": []},
            "spec": minimal_spec(mode="FineTuning", model={"fromJob": "fe"}),
        }
    )
    wire = job.to_dict()
    assert wire["spec"]["model"]["fromJob"] == "fe"
    assert wire["spec"]["training"]["learningRate"] == 1e-5
    assert "from_job" not in str(wire)
    assert TransferJob.from_dict(wire) == job


def test_python_names_work_too() -> None:
    from transferjob import DataSpec, Location, OutputSpec, PVCSource, TransferJobSpec

    spec = TransferJobSpec(
        data=DataSpec(source=Location(host_path="/data/digits")),
        output=OutputSpec(location=Location(pvc=PVCSource(claim_name="models"))),
    )
    assert spec.to_dict()["data"]["source"] == {"hostPath": "/data/digits"}


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    *parents, leaf = path.split(".")
    target = obj
    for key in parents:
        target = target.setdefault(key, {})
    target[leaf] = value
    return obj


# (field path to set, bad value, text the error must contain). At least 30 distinct bad specs.
BAD = [
    ("mode", "Distillation", "spec.mode"),
    ("model.base", "NotANet", "spec.model"),
    ("model.base", "", "spec.model.base"),
    ("model.imageSize", 16, "spec.model.imageSize"),
    ("model.imageSize", 4096, "spec.model.imageSize"),
    ("model.imageSize", 300, "imageSize must be one of"),
    ("model.imageSize", "big", "spec.model.imageSize"),
    ("model.head.dropout", 1.0, "spec.model.head.dropout"),
    ("model.head.dropout", -0.1, "spec.model.head.dropout"),
    ("model.head.pooling", "median", "spec.model.head.pooling"),
    ("model.head.hiddenUnits", [0], "hiddenUnits"),
    ("model.fromJob", "Not_A_Name", "spec.model.fromJob"),
    ("model.fineTuneAt", -1, "fineTuneAt"),
    ("model.weirdField", 1, "spec.model.weirdField"),
    ("training.epochs", 0, "spec.training.epochs"),
    ("training.epochs", 100001, "spec.training.epochs"),
    ("training.learningRate", 0, "spec.training.learningRate"),
    ("training.learningRate", -1e-4, "spec.training.learningRate"),
    ("training.batchSize", 0, "spec.training.batchSize"),
    ("training.optimizer", "adagrad9", "spec.training.optimizer"),
    ("training.earlyStopping.patience", -1, "spec.training.earlyStopping.patience"),
    ("training.earlyStopping.minDelta", -0.5, "spec.training.earlyStopping.minDelta"),
    ("training.earlyStopping.monitor", "val_f1", "spec.training.earlyStopping.monitor"),
    ("training.seed", -3, "spec.training.seed"),
    ("training.learnigRate", 1e-4, "spec.training.learnigRate"),
    ("data.augmentation.rotation", 2.0, "spec.data.augmentation.rotation"),
    ("data.augmentation.flip", "diagonal", "spec.data.augmentation.flip"),
    ("data.augmentation.crop", 0.9, "spec.data.augmentation.crop"),
    ("data.augmentation.cachedViews", 0, "spec.data.augmentation.cachedViews"),
    ("data.trainDir", "../etc", "spec.data.trainDir"),
    ("data.classNames", ["cats"], "classNames"),
    ("data.classNames", ["cats", "cats"], "classNames"),
    ("data.cache", "disk", "spec.data.cache"),
    ("data.source", {}, "exactly one of pvc, hostPath or uri"),
    ("data.source", {"hostPath": "/a", "uri": "gs://b/c"}, "exactly one of pvc, hostPath or uri"),
    ("data.source", {"hostPath": "relative/dir"}, "spec.data.source.hostPath"),
    ("data.source", {"pvc": {"claimName": "Data_Set"}}, "spec.data.source.pvc.claimName"),
    ("data.source", {"pvc": {"claimName": "d", "subPath": "/abs"}}, "spec.data.source.pvc.subPath"),
    ("data.source", {"uri": "not a uri"}, "spec.data.source.uri"),
    ("output.location", {"pvc": {"claimName": "m", "subPath": "a/../../b"}}, "subPath"),
    ("resources.gpus", -1, "spec.resources.gpus"),
    ("resources.gpus", 65, "spec.resources.gpus"),
    ("resources.memory", "lots", "spec.resources.memory"),
    ("resources.cpu", "2 cores", "spec.resources.cpu"),
    ("resources.tolerations", [{"operator": "Maybe"}], "spec.resources.tolerations[0].operator"),
    ("resources.priorityClassName", "High Priority", "spec.resources.priorityClassName"),
    ("resources.imagePullPolicy", "Sometimes", "spec.resources.imagePullPolicy"),
    ("runPolicy.backoffLimit", -1, "spec.runPolicy.backoffLimit"),
    ("runPolicy.activeDeadlineSeconds", 0, "spec.runPolicy.activeDeadlineSeconds"),
    ("runPolicy.ttlSecondsAfterFinished", -5, "spec.runPolicy.ttlSecondsAfterFinished"),
    ("runPolicy.pendingTimeoutSeconds", 0, "spec.runPolicy.pendingTimeoutSeconds"),
    ("model.base", "../../etc/passwd.keras", "spec.model.base"),
    ("model.base", "/models/$(id).keras", "spec.model.base"),
    ("model.base", "/models/a b.keras", "spec.model.base"),
    ("model.base", "models/source.keras", "spec.model.base"),
    ("model.base", "/models/savedmodel", "spec.model.base"),
    ("model.base", "imagenet21k", "spec.model.base"),
    ("model.weights", "imagenet21k", "spec.model.weights"),
    ("model.weights", "/w/x.h5;rm -rf /", "spec.model.weights"),
    ("model.weights", "/w/../x.h5", "spec.model.weights"),
    ("model.fineTuneAt", "", "spec.model.fineTuneAt"),
    ("model.fineTuneAt", "conv 3", "spec.model.fineTuneAt"),
    ("model.fineTuneAt", True, "spec.model.fineTuneAt"),
    ("model.imageSize", "224", "spec.model.imageSize"),
    ("model.head.dropout", "0.5", "spec.model.head.dropout"),
    ("training.epochs", "5", "spec.training.epochs"),
    ("training.epochs", 5.5, "spec.training.epochs"),
    ("training.mixedPrecision", "yes", "spec.training.mixedPrecision"),
    ("output.tensorboard", "yes", "spec.output.tensorboard"),
    ("output.tensorboard", 1, "spec.output.tensorboard"),
    ("data.valDir", "train", "spec.data.valDir"),
    ("data.testDir", "val", "spec.data.valDir"),
    ("data.trainDir", "./train", "spec.data.trainDir"),
    ("data.trainDir", "a//train", "spec.data.trainDir"),
    ("data.classNames", ["", "cats"], "spec.data.classNames"),
    ("data.classNames", [".", "cats"], "spec.data.classNames"),
    ("data.classNames", ["a/b", "cats"], "spec.data.classNames"),
    ("data.source", {"hostPath": "/data/../etc"}, "spec.data.source.hostPath"),
    ("resources.memory", "-1Gi", "spec.resources.memory"),
    ("resources.cpu", "-2", "spec.resources.cpu"),
]


@pytest.mark.parametrize(("path", "value", "expected"), BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_bad_spec_is_rejected_naming_the_field(path: str, value: Any, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_set(minimal_spec(), path, value))
    assert expected in str(info.value), info.value.problems


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model": {"fromJob": "fe"}}, "model.fromJob is only allowed with mode FineTuning"),
        ({"model": {"fromModel": "/m.keras"}}, "model.fromModel is only allowed with mode FineTuning"),
        ({"model": {"fineTuneAt": 3}}, "model.fineTuneAt is only allowed with mode FineTuning"),
        (
            {"mode": "FineTuning", "model": {"fromJob": "a", "fromModel": "/m.keras"}},
            "fromJob and fromModel are mutually exclusive",
        ),
        ({"mode": "FineTuning", "model": {"base": "NASNetMobile"}}, "fineTuneAt is required"),
        ({"mode": "FineTuning", "model": {"base": "/m/source.keras"}}, "fineTuneAt is required"),
        ({"model": {"base": "InceptionV3", "imageSize": 64}}, "at least 75 for InceptionV3"),
        ({"data": None}, "spec.data"),
        ({"output": None}, "spec.output"),
    ],
)
def test_cross_field_rules(overrides: dict[str, Any], expected: str) -> None:
    spec = {k: v for k, v in minimal_spec(**overrides).items() if v is not None}
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert expected in str(info.value)


def test_every_bad_spec_is_distinct() -> None:
    assert len({(p, repr(v)) for p, v, _ in BAD}) == len(BAD) >= 30


def test_saved_model_base_and_weights_file_accepted() -> None:
    spec = parse_spec(
        minimal_spec(
            mode="FineTuning",
            model={"base": "/models/source.keras", "fineTuneAt": "conv2", "imageSize": 32},
        )
    )
    assert spec.model.base == "/models/source.keras"
    spec = parse_spec(minimal_spec(model={"base": "ResNet50", "weights": "/w/resnet50.h5", "imageSize": 100}))
    assert spec.model.weights == "/w/resnet50.h5"


def test_metrics_keep_four_significant_digits_and_drop_non_finite() -> None:
    from transferjob import EpochMetrics, TestMetrics

    epoch = EpochMetrics(epoch=3, loss=float("nan"), val_accuracy=0.9477611780166626, learning_rate=1e-5)
    assert epoch.to_dict() == {"epoch": 3, "valAccuracy": 0.9478, "learningRate": 1e-5}
    assert TestMetrics(loss=0.000123456, accuracy=0.9925925).accuracy == 0.9926
    assert TestMetrics(loss=0.000123456, accuracy=1.0).loss == 0.0001235


def test_yaml_numbers_read_as_kubectl_reads_them() -> None:
    """`1e-5` is a float to kubectl and JSON; PyYAML alone would make it a string, which strict
    validation rejects, so the SDK and the trainer read YAML through `transferjob.yamlio`."""
    manifest = TransferJob.from_yaml(
        "apiVersion: transferjob.io/v1alpha1\nkind: TransferJob\nmetadata: {name: t}\n"
        "spec:\n  data: {source: {hostPath: /d}}\n  output: {location: {hostPath: /o}}\n"
        "  training: {learningRate: 1e-5, epochs: 3}\n"
    )
    assert manifest.spec.training.learning_rate == 1e-5
    with pytest.raises(ValueError, match="learningRate"):
        TransferJob.from_yaml(
            "apiVersion: transferjob.io/v1alpha1\nkind: TransferJob\nmetadata: {name: t}\nspec:\n"
            "  data: {source: {hostPath: /d}}\n  output: {location: {hostPath: /o}}\n"
            "  training: {learningRate: '1e-5'}\n"
        )


def test_output_locations_are_exclusive_unless_the_spec_adopts() -> None:
    assert parse_spec(minimal_spec()).output.ownership_policy == "Exclusive"
    adopt = minimal_spec(output={"location": {"pvc": {"claimName": "models"}}, "ownershipPolicy": "Adopt"})
    assert parse_spec(adopt).output.to_dict()["ownershipPolicy"] == "Adopt"
    adopt["output"]["ownershipPolicy"] = "adopt"
    with pytest.raises(
        SpecError, match=r"spec\.output\.ownershipPolicy: Input should be 'Exclusive' or 'Adopt'"
    ):
        parse_spec(adopt)


@pytest.mark.parametrize(
    ("mode", "model", "frozen"),
    [
        ("FeatureExtraction", {"weights": "none", "imageSize": 32}, "all of them"),
        ("FeatureExtraction", {"base": "VGG16", "weights": "none"}, "all of them"),
        ("FineTuning", {"weights": "none"}, "BatchNorm and those before fineTuneAt"),
        ("FineTuning", {"weights": "none", "fineTuneAt": 0}, "BatchNorm and those before fineTuneAt"),
    ],
)
def test_an_untrained_base_is_valid_with_a_warning(mode: str, model: dict[str, Any], frozen: str) -> None:
    """Measured: MobileNetV2 with weights none gives features near 1e-12 and chance accuracy, in both
    modes (fine-tuning keeps BatchNorm frozen)."""
    spec = parse_spec(minimal_spec(mode=mode, model=model))
    (warning,) = spec.warnings()
    assert (warning.reason, warning.field) == ("UntrainedBase", "spec.model.weights")
    base = model.get("base", "MobileNetV2")
    assert str(warning).startswith(f"spec.model.weights: none leaves {base} untrained, and its frozen layers")
    assert f"({frozen})" in warning.message


@pytest.mark.parametrize(
    ("mode", "model"),
    [
        ("FeatureExtraction", {}),  # imagenet
        ("FeatureExtraction", {"weights": "/weights/mobilenet_v2.h5"}),
        ("FeatureExtraction", {"base": "/models/source.keras", "weights": "none", "imageSize": 32}),
        ("FineTuning", {"weights": "none", "fromJob": "features"}),
        ("FineTuning", {"weights": "none", "fromModel": "/models/features/model.keras"}),
    ],
)
def test_pretrained_weights_from_anywhere_give_no_warning(mode: str, model: dict[str, Any]) -> None:
    """Weights from ImageNet, a file, a saved model as the base, or the model fine-tuning starts from."""
    assert parse_spec(minimal_spec(mode=mode, model=model)).warnings() == []
