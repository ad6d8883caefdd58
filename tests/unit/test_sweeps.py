"""The TransferSweep API as users meet it: a sweep written in YAML or Python, its defaults, and bad sweeps
refused with the sweep field named, before anything reaches a cluster.

The API server's half of the same verdicts is tests/cluster/test_corpus.py (the cases in
tests/corpus/sweeps.yaml); here the SDK's half of that corpus runs without a cluster.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml

from tests.cluster.admission import SWEEP_SPEC, load_corpus, merged, same_field
from transferjob import TransferSweep, yamlio
from transferjob.errors import SpecError
from transferjob.models import Mode, TransferJobSpec
from transferjob.sweeps import (
    MAX_SWEEP_NAME,
    PATHS,
    AlgorithmName,
    Bounds,
    Choice,
    ChoiceParameter,
    Continuous,
    FloatParameter,
    Goal,
    Integers,
    IntParameter,
    LayerParameter,
    SearchSpace,
    StoppingRule,
    SwitchParameter,
    TrialPhase,
    parse_sweep_spec,
    target_field,
)

ROOT = Path(__file__).resolve().parents[2]

SWEEP_YAML = """
apiVersion: transferjob.io/v1alpha1
kind: TransferSweep
metadata:
  name: flowers-lr
spec:
  template:
    mode: FineTuning
    model: {fromJob: flowers-features}
    data: {source: {pvc: {claimName: datasets, subPath: flowers}}}
    output: {location: {pvc: {claimName: models, subPath: sweeps}}}
  parameters:
    training.learningRate: {logUniform: {min: 1e-6, max: 1e-4}}
    model.fineTuneAt: {categorical: {values: [block_13_expand, block_15_expand, 100]}}
    training.batchSize: {int: {min: 16, max: 64, step: 16}}
    data.augmentation.enabled: {categorical: {values: [true, false]}}
  objective: {metric: testAccuracy}
  algorithm: {name: TPE, seed: 7}
  maxTrials: 12
  parallelTrials: 3
  earlyStopping: {rule: Median, minEpochs: 2, minTrials: 3}
"""

CORPUS = load_corpus("sweeps.yaml")


def sdk_verdict(spec: dict[str, Any]) -> str | None:
    try:
        parse_sweep_spec(copy.deepcopy(spec))
    except SpecError as error:
        return str(error)
    return None


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
def test_corpus_case_sdk_side(case: dict[str, Any]) -> None:
    verdict = sdk_verdict(merged(SWEEP_SPEC, case["spec"]))
    if case["expect"] == "admit":
        assert verdict is None, case
        return
    assert verdict is not None, case
    assert same_field(case["field"], verdict), f"expected {case['field']} named, got {verdict}"
    if "says" in case:
        assert case["says"] in verdict, verdict


def test_a_sweep_reads_from_yaml_with_typed_parameters() -> None:
    sweep = TransferSweep.from_yaml(SWEEP_YAML)
    spec = sweep.spec
    assert spec.parameters.paths() == [
        "data.augmentation.enabled",
        "model.fineTuneAt",
        "training.batchSize",
        "training.learningRate",
    ]
    distributions = dict((p, v.distribution()) for p, v in spec.parameters.items())
    assert distributions["training.learningRate"] == Continuous(1e-6, 1e-4, log=True)
    assert distributions["model.fineTuneAt"] == Choice(("block_13_expand", "block_15_expand", 100))
    assert distributions["training.batchSize"] == Integers(16, 64, 16)
    assert distributions["data.augmentation.enabled"] == Choice((True, False))
    assert spec.objective.direction is Goal.MAXIMIZE
    assert spec.objective.stopping_metric == "valAccuracy"
    assert spec.algorithm.name is AlgorithmName.TPE
    assert spec.early_stopping.rule is StoppingRule.MEDIAN
    # Written back, it is the same sweep: what `kubectl apply` would store.
    assert TransferSweep.from_yaml(sweep.to_yaml()) == sweep


def test_defaults() -> None:
    spec = parse_sweep_spec({**SWEEP_SPEC, "maxTrials": None, "parallelTrials": None})
    assert (spec.max_trials, spec.parallel_trials, spec.max_failed_trials) == (10, 1, 3)
    assert (spec.algorithm.name, spec.algorithm.seed) == (AlgorithmName.RANDOM, 0)
    assert spec.early_stopping.rule is StoppingRule.NONE
    assert (spec.early_stopping.min_epochs, spec.early_stopping.min_trials) == (2, 3)
    assert spec.suspend is False
    assert spec.objective.goal is None and spec.objective.direction is Goal.MAXIMIZE


def test_a_loss_is_minimized_by_default() -> None:
    spec = parse_sweep_spec(merged(SWEEP_SPEC, {"objective": {"metric": "testLoss"}}))
    assert spec.objective.direction is Goal.MINIMIZE
    assert spec.objective.stopping_metric == "valLoss"


def test_the_template_keeps_mode_defaults_unresolved() -> None:
    """A trial that searches model.base must get its own base's fineTuneAt, not the template's."""
    spec = parse_sweep_spec(
        merged(SWEEP_SPEC, {"template": {"mode": "FineTuning", "model": {"fromJob": "fe"}}})
    )
    assert spec.template.mode is Mode.FINE_TUNING
    assert spec.template.model.fine_tune_at is None
    assert spec.template.training.epochs is None and spec.template.training.learning_rate is None
    # The same dict as a TransferJob spec resolves them, as before.
    job = TransferJobSpec.model_validate(spec.template.to_dict())
    assert (job.model.fine_tune_at, job.training.epochs) == ("block_13_expand", 10)


def test_a_repeated_parameter_path_is_refused_when_read() -> None:
    """In YAML a repeated path is a repeated key: kubectl refuses the manifest, and so does `tj`."""
    text = SWEEP_YAML.replace(
        "    training.batchSize: {int: {min: 16, max: 64, step: 16}}\n",
        "    training.batchSize: {int: {min: 16, max: 64, step: 16}}\n"
        "    training.batchSize: {categorical: {values: [8]}}\n",
    )
    with pytest.raises(yaml.YAMLError, match=r"found duplicate key 'training\.batchSize'"):
        yamlio.load(text)


def test_yaml_merge_keys_may_still_be_overridden() -> None:
    assert yamlio.load("base: &b {a: 1, b: 2}\nother: {<<: *b, b: 3}") == {
        "base": {"a": 1, "b": 2},
        "other": {"a": 1, "b": 3},
    }


def test_a_whole_float_trial_count_is_refused_as_the_api_server_does() -> None:
    """A CEL rule reads maxTrials: the API server's schema takes 6.0 as an integer, then the rule fails on
    it (naming only `spec`, so the corpus cannot hold this case); the SDK refuses it too."""
    with pytest.raises(SpecError, match=r"spec\.maxTrials"):
        parse_sweep_spec({**SWEEP_SPEC, "maxTrials": 6.0})
    assert parse_sweep_spec({**SWEEP_SPEC, "maxFailedTrials": 2.0}).max_failed_trials == 2


def test_sweep_names_leave_room_for_the_trial_index() -> None:
    body = yamlio.load(SWEEP_YAML)
    body["metadata"]["name"] = "s" * MAX_SWEEP_NAME
    assert TransferSweep.from_dict(body).metadata.name == "s" * 59
    body["metadata"]["name"] = "s" * (MAX_SWEEP_NAME + 1)
    with pytest.raises(SpecError, match="at most 59 characters"):
        TransferSweep.from_dict(body)


def test_errors_name_every_bad_field_at_once() -> None:
    with pytest.raises(SpecError) as caught:
        parse_sweep_spec(
            merged(
                SWEEP_SPEC,
                {
                    "parameters": {"model.head.dropout": {"uniform": {"min": 0.6, "max": 0.2}}},
                    "objective": {"metric": "f1"},
                },
            )
        )
    fields = [line.split(":")[0] for line in caught.value.problems]
    assert "spec.parameters.model.head.dropout.uniform.min" in fields
    assert "spec.objective.metric" in fields


def test_every_allowed_path_is_a_field_of_its_kind() -> None:
    """The allow-list is the SearchSpace's fields; each must land on a TransferJobSpec field whose type
    takes what the parameter kind gives (a float path a float field, ...)."""
    kinds = {
        FloatParameter: float,
        IntParameter: int,
        LayerParameter: str,
        ChoiceParameter: str,
        SwitchParameter: bool,
    }
    assert len(PATHS) == 18
    for name, path in PATHS.items():
        kind = get_args(SearchSpace.model_fields[name].annotation)[0]  # X of `X | None`
        target = target_field(path)
        assert kinds[kind] in _scalar_types(target.annotation), (path, kind, target.annotation)


def _scalar_types(annotation: Any) -> set[type]:
    if get_origin(annotation) is Literal:
        return {type(a) for a in get_args(annotation)}
    args = get_args(annotation)
    if args:
        return set().union(*(_scalar_types(a) for a in args))
    return {annotation}


def test_bounds_come_from_the_target_fields() -> None:
    assert Bounds.of(target_field("training.learningRate")).describe() == "(0, 10]"
    assert Bounds.of(target_field("model.head.dropout")).describe() == "[0, 1)"
    assert Bounds.of(target_field("training.seed")).describe() == "[0, 2147483647]"
    assert 0.5 in Bounds.of(target_field("data.augmentation.crop"))
    assert 0.51 not in Bounds.of(target_field("data.augmentation.crop"))
    assert True not in Bounds.of(target_field("training.batchSize"))


def test_status_round_trips_what_the_operator_writes() -> None:
    body = yamlio.load(SWEEP_YAML)
    body["status"] = {
        "phase": "Running",
        "trials": [
            {
                "index": 0,
                "name": "flowers-lr-0",
                "parameters": {
                    "training.learningRate": 1.2e-5,
                    "model.fineTuneAt": 100,
                    "data.augmentation.enabled": True,
                },
                "phase": "Stopped",
                "epochs": 2,
                "curve": [0.5, None],
                "message": "median rule",
            }
        ],
        "finishedTrials": 1,
        "bestTrial": {"index": 0, "name": "flowers-lr-0", "objective": 0.91},
    }
    sweep = TransferSweep.from_dict(body)
    assert sweep.status is not None
    trial = sweep.status.trials[0]
    assert trial.phase is TrialPhase.STOPPED and trial.curve == [0.5, None]
    assert trial.parameters == {
        "training.learningRate": 1.2e-5,
        "model.fineTuneAt": 100,
        "data.augmentation.enabled": True,
    }
    assert TransferSweep.from_dict(sweep.to_dict()) == sweep


def test_the_docs_example_is_the_shipped_example() -> None:
    """docs/sweeps.md shows manifests/examples/03-sweep.yaml in short; they must stay the same sweep."""
    docs = (ROOT / "docs" / "sweeps.md").read_text()
    shown = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    example = (ROOT / "manifests" / "examples" / "03-sweep.yaml").read_text()
    assert TransferSweep.from_yaml(shown) == TransferSweep.from_yaml(example)
