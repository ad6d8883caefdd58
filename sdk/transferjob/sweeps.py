"""The TransferSweep API: a hyper-parameter search over TransferJobs, in the same pydantic-to-CRD style.

A sweep is a TransferJob `template`, a search space (`parameters`: a distribution for each of a fixed
list of template fields), an `objective` (an epoch or test metric and whether to maximise or minimise
it), an `algorithm` (Grid, Random or Optuna's TPE), how many trials run in all and at once, a failure
budget and an optional median early-stopping rule. Each trial is a child TransferJob named
`<sweep>-<index>` whose spec is the template with the trial's parameters applied (`transferjob.trials`).

Why the search space is a map keyed by path (`training.learningRate: {logUniform: ...}`) and not a
list of `{path, ...}` entries: a structural CRD schema gives every list item one type, so a list could
not say that `training.optimizer` takes strings while `training.batchSize` takes integers and
`training.learningRate` takes numbers. As a map, every allowed path is a property with its own typed
schema: the API server rejects a categorical value of the wrong type, an unknown path (strict field
validation) and a repeated path (a duplicate key) with the field named, and CEL checks each value
against the bounds of the field it lands in, read from the TransferJob models themselves.

Everything here is pure data and validation; the algorithms are in `transferjob.suggest` and the
functions over trials (apply, early stopping, best) in `transferjob.trials`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal, TypeAlias, get_args, get_origin

import annotated_types
import yaml
from pydantic import Field, WithJsonSchema, field_validator, model_validator
from pydantic.fields import FieldInfo

from transferjob import yamlio
from transferjob.bases import BASES
from transferjob.constants import API_VERSION, SWEEP_KIND
from transferjob.models import (
    LAYER_NAME,
    ApiModel,
    Condition,
    Metric,
    Mode,
    ModelArtifacts,
    ObjectMeta,
    OptionalMetric,
    Phase,
    Rule,
    TransferJobSpec,
    cel_list,
)

#: Most trials one sweep runs: each keeps its parameters and its stopping curve in `.status`, which
#: must stay well inside etcd's object size limit (500 trials x 100 epochs is about 0.5 MiB).
MAX_TRIALS = 500
#: Most values one categorical distribution lists.
MAX_CHOICES = 64
#: Longest sweep name: a trial is `<sweep>-<index>` with an index of up to three digits
#: (`MAX_TRIALS` - 1), and a TransferJob name is at most 63 characters.
MAX_SWEEP_NAME = 63 - 1 - len(str(MAX_TRIALS - 1))
#: Most epochs of a trial's stopping curve kept on `.status` (the first ones: the median rule compares
#: trials epoch by epoch from the start).
CURVE_LIMIT = 100
#: Significant digits a sampled float keeps: `0.000123457`, not `0.00012345678901234`, on `.status`
#: and in the child's spec, with no effect on a search.
SAMPLE_DIGITS = 6


def cel_name(path: str) -> str:
    """A property name as CEL spells it: the API server escapes `.` as `__dot__`."""
    return path.replace(".", "__dot__")


def _exactly_one(*names: str) -> str:
    return " + ".join(f"(has(self.{n}) ? 1 : 0)" for n in names) + " == 1"


# ------------------------------------------------------------------------------------- distributions


class Uniform(ApiModel):
    """Every number between min and max equally likely."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.min < self.max",
            "min must be less than max (a range of one value is a constant: set it in the template)",
            lambda m: m.min < m.max,
            ".min",
        ),
    )

    min: float = Field(description="Smallest value.")
    max: float = Field(description="Largest value.")


class LogUniform(Uniform):
    """Every order of magnitude between min and max equally likely: for learning rates and the like."""

    rules = (
        Rule(
            "self.min > 0.0",
            "min must be greater than 0: a log-uniform range cannot reach 0 (its logarithm is -infinity)",
            lambda m: m.min > 0,
            ".min",
        ),
        *Uniform.rules,
    )


class IntRange(ApiModel):
    """The integers min, min+step, min+2*step, ... up to max, each equally likely."""

    rules = (Rule("self.min < self.max", "min must be less than max", lambda m: m.min < m.max, ".min"),)
    # Read by the rules here and on the search space: a whole float (`16.0`) passes the API server's
    # integer schema but then fails CEL, so the SDK refuses it too (see `ApiModel.cel_ints`).
    cel_ints = frozenset({"min", "max"})

    min: int = Field(description="Smallest value.")
    max: int = Field(description="Largest value; reached only when max - min is a multiple of step.")
    step: int = Field(default=1, ge=1, description="Distance between neighbouring values.")


def _distinct(values: list[Any]) -> list[Any]:
    # The API server's twin is the schema's `x-kubernetes-list-type: set` (a "Duplicate value" error).
    if len(set(values)) != len(values):
        raise ValueError("values must not repeat a value")
    return values


def _choices(description: str) -> Any:
    """The `values` field of a categorical distribution."""
    return Field(
        description=description,
        min_length=1,
        max_length=MAX_CHOICES,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class FloatChoices(ApiModel):
    """A list of numbers to choose from."""

    values: list[float] = _choices("The numbers, each equally likely.")
    _distinct = field_validator("values")(_distinct)


class IntChoices(ApiModel):
    """A list of integers to choose from."""

    cel_ints = frozenset({"values"})

    values: list[int] = _choices("The integers, each equally likely.")
    _distinct = field_validator("values")(_distinct)


class StringChoices(ApiModel):
    """A list of names to choose from."""

    values: list[Annotated[str, Field(min_length=1, max_length=255)]] = _choices(
        "The names, each equally likely."
    )
    _distinct = field_validator("values")(_distinct)


class BoolChoices(ApiModel):
    """true, false, or both."""

    values: list[bool] = _choices("true and/or false, each equally likely.")
    _distinct = field_validator("values")(_distinct)


class LayerChoices(ApiModel):
    """Layers to fine-tune from, each a name or an index, as `model.fineTuneAt` takes them."""

    cel_ints = frozenset({"values"})

    values: list[
        Annotated[
            int | Annotated[str, Field(min_length=1, max_length=255)],
            # maxLength on the node (not only in its string branch) bounds CEL's cost estimate.
            WithJsonSchema(
                {"anyOf": [{"type": "integer"}, {"type": "string"}], "maxLength": 255},
            ),
            Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
        ]
    ] = _choices("Layer names or indexes, each equally likely.")
    _distinct = field_validator("values")(_distinct)


@dataclass(frozen=True)
class Continuous:
    """A range of floats, sampled uniformly or (log) uniformly in its logarithm."""

    low: float
    high: float
    log: bool


@dataclass(frozen=True)
class Integers:
    """low, low+step, ... up to high."""

    low: int
    high: int
    step: int

    def values(self) -> range:
        """Every integer in the range, in order."""
        return range(self.low, self.high + 1, self.step)


@dataclass(frozen=True)
class Choice:
    """One of a list of values, in the order given."""

    values: tuple[ParameterValue, ...]


#: What an algorithm samples from, whatever the wire form.
Distribution: TypeAlias = Continuous | Integers | Choice
#: One trial's value for one parameter.
ParameterValue: TypeAlias = bool | int | float | str


class FloatParameter(ApiModel):
    """A number: a uniform or log-uniform range, or a list of values."""

    rules = (
        Rule(
            _exactly_one("logUniform", "uniform", "categorical"),
            "exactly one of logUniform, uniform or categorical must be set",
            lambda m: sum(d is not None for d in (m.log_uniform, m.uniform, m.categorical)) == 1,
        ),
    )

    log_uniform: LogUniform | None = Field(default=None, description="Uniform in the logarithm.")
    uniform: Uniform | None = Field(default=None, description="Uniform.")
    categorical: FloatChoices | None = Field(default=None, description="One of these numbers.")

    def distribution(self) -> Distribution:
        """The distribution the algorithms sample."""
        if self.categorical is not None:
            return Choice(tuple(self.categorical.values))
        if self.log_uniform is not None:
            return Continuous(self.log_uniform.min, self.log_uniform.max, log=True)
        assert self.uniform is not None  # the rule above
        return Continuous(self.uniform.min, self.uniform.max, log=False)


class IntParameter(ApiModel):
    """An integer: a range with a step, or a list of values."""

    rules = (
        Rule(
            _exactly_one("int", "categorical"),
            "exactly one of int or categorical must be set",
            lambda m: (m.int_range is None) != (m.categorical is None),
        ),
    )

    int_range: IntRange | None = Field(default=None, alias="int", description="min, min+step, ... up to max.")
    categorical: IntChoices | None = Field(default=None, description="One of these integers.")

    def distribution(self) -> Distribution:
        """The distribution the algorithms sample."""
        if self.categorical is not None:
            return Choice(tuple(self.categorical.values))
        assert self.int_range is not None  # the rule above
        r = self.int_range
        return Integers(r.min, r.min + (r.max - r.min) // r.step * r.step, r.step)


class LayerParameter(IntParameter):
    """Where fine-tuning starts: a range of layer indexes, or a list of layer names or indexes."""

    categorical: LayerChoices | None = Field(  # type: ignore[assignment]
        default=None, description="One of these layers (names or indexes)."
    )


class ChoiceParameter(ApiModel):
    """A name from a list."""

    categorical: StringChoices = Field(description="One of these names.")

    def distribution(self) -> Distribution:
        """The distribution the algorithms sample."""
        return Choice(tuple(self.categorical.values))


class SwitchParameter(ApiModel):
    """On or off."""

    categorical: BoolChoices = Field(description="true, false, or both.")

    def distribution(self) -> Distribution:
        """The distribution the algorithms sample."""
        return Choice(tuple(self.categorical.values))


Parameter: TypeAlias = FloatParameter | IntParameter | ChoiceParameter | SwitchParameter


# -------------------------------------------------------------------------------------- search space


def _float(path: str, what: str) -> Any:
    return Field(default=None, alias=path, description=f"{what}: logUniform, uniform or categorical.")


def _int(path: str, what: str) -> Any:
    return Field(default=None, alias=path, description=f"{what}: int or categorical.")


def _names(path: str, what: str) -> Any:
    return Field(default=None, alias=path, description=f"{what}: categorical.")


class SearchSpace(ApiModel):
    """Which template fields a sweep varies, and how: at least one, each at most once.

    The allow-list is the fields below: the ones worth searching whose every value the template can
    take on its own. Each accepts the distributions of its type, and every value a distribution can
    give must be valid for its field (CEL, from the field's own bounds); whether a combination is valid
    (an imageSize for a base) shows when a trial's spec is built, and that trial then fails.
    """

    training_learning_rate: FloatParameter | None = _float("training.learningRate", "Learning rate")
    training_batch_size: IntParameter | None = _int("training.batchSize", "Images per step")
    training_epochs: IntParameter | None = _int("training.epochs", "Maximum epochs")
    training_optimizer: ChoiceParameter | None = _names("training.optimizer", "Optimizer")
    training_early_stopping_patience: IntParameter | None = _int(
        "training.earlyStopping.patience", "Epochs without improvement before the trainer stops"
    )
    training_early_stopping_min_delta: FloatParameter | None = _float(
        "training.earlyStopping.minDelta", "Smallest change the trainer's early stopping counts"
    )
    training_seed: IntParameter | None = _int("training.seed", "Seed (repeat a setting over seeds)")
    model_base: ChoiceParameter | None = _names("model.base", "Base network (keras.applications names)")
    model_image_size: IntParameter | None = _int("model.imageSize", "Input size in pixels")
    model_fine_tune_at: LayerParameter | None = Field(
        default=None,
        alias="model.fineTuneAt",
        description="Layer fine-tuning starts from (template mode FineTuning): int (layer indexes) or "
        "categorical (names or indexes).",
    )
    model_head_dropout: FloatParameter | None = _float("model.head.dropout", "Head dropout")
    model_head_pooling: ChoiceParameter | None = _names("model.head.pooling", "Head pooling")
    data_augmentation_enabled: SwitchParameter | None = Field(
        default=None, alias="data.augmentation.enabled", description="Augment or not: categorical."
    )
    data_augmentation_flip: ChoiceParameter | None = _names("data.augmentation.flip", "Random flips")
    data_augmentation_rotation: FloatParameter | None = _float(
        "data.augmentation.rotation", "Random rotation"
    )
    data_augmentation_zoom: FloatParameter | None = _float("data.augmentation.zoom", "Random zoom")
    data_augmentation_translation: FloatParameter | None = _float(
        "data.augmentation.translation", "Random shift"
    )
    data_augmentation_crop: FloatParameter | None = _float("data.augmentation.crop", "Random crop")

    def items(self) -> list[tuple[str, Parameter]]:
        """The parameters set, as (path, parameter), sorted by path: the order every algorithm uses."""
        found = [(PATHS[name], getattr(self, name)) for name in type(self).model_fields]
        return sorted((p, v) for p, v in found if v is not None)

    def paths(self) -> list[str]:
        """The paths set, sorted."""
        return [path for path, _ in self.items()]


#: SearchSpace attribute -> wire path (`training_learning_rate` -> `training.learningRate`).
PATHS: dict[str, str] = {name: str(f.alias) for name, f in SearchSpace.model_fields.items()}


def target_field(path: str) -> FieldInfo:
    """The TransferJobSpec field a parameter path lands in (`model.head.dropout` -> HeadSpec.dropout)."""
    model: Any = TransferJobSpec
    info: FieldInfo | None = None
    for part in path.split("."):
        info = next(f for name, f in model.model_fields.items() if (f.alias or name) == part)
        model = _members_model(info.annotation)
    assert info is not None
    return info


def _members_model(annotation: Any) -> Any:
    """The pydantic model inside `X` or `X | None`, if any."""
    for member in get_args(annotation) or (annotation,):
        if isinstance(member, type) and issubclass(member, ApiModel):
            return member
    return None


@dataclass(frozen=True)
class Bounds:
    """The interval a numeric field accepts, from its pydantic constraints."""

    low: float
    low_inclusive: bool
    high: float
    high_inclusive: bool

    @classmethod
    def of(cls, info: FieldInfo) -> Bounds:
        low, low_inclusive, high, high_inclusive = -math.inf, True, math.inf, True
        for item in info.metadata:
            if isinstance(item, annotated_types.Ge):
                low, low_inclusive = float(item.ge), True  # type: ignore[arg-type]
            elif isinstance(item, annotated_types.Gt):
                low, low_inclusive = float(item.gt), False  # type: ignore[arg-type]
            elif isinstance(item, annotated_types.Le):
                high, high_inclusive = float(item.le), True  # type: ignore[arg-type]
            elif isinstance(item, annotated_types.Lt):
                high, high_inclusive = float(item.lt), False  # type: ignore[arg-type]
        return cls(low, low_inclusive, high, high_inclusive)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        above = value >= self.low if self.low_inclusive else value > self.low
        below = value <= self.high if self.high_inclusive else value < self.high
        return above and below

    def cel(self, value: str, integer: bool) -> str:
        """CEL for `value in self`, with literals of the value's CEL type (int or double)."""

        def literal(x: float) -> str:
            return str(int(x)) if integer else repr(float(x))

        return f"{value} {'>=' if self.low_inclusive else '>'} {literal(self.low)} && {value} " + (
            f"{'<=' if self.high_inclusive else '<'} {literal(self.high)}"
        )

    def describe(self) -> str:
        """`(0, 10]`, `[1, 4096]`."""

        def number(x: float) -> str:
            return str(int(x)) if x.is_integer() else f"{x:g}"

        return (
            f"{'[' if self.low_inclusive else '('}{number(self.low)}, {number(self.high)}"
            f"{']' if self.high_inclusive else ')'}"
        )


def _numeric_rule(path: str, integer: bool) -> Rule:
    """Every value the parameter at `path` can give lies within its target field's bounds."""
    bounds = Bounds.of(target_field(path))
    p = f"self.{cel_name(path)}"
    if integer:
        cel = (
            f"!has({p}) || ((!has({p}.int) || ({bounds.cel(f'{p}.int.min', True)} && "
            f"{p}.int.max {'<=' if bounds.high_inclusive else '<'} {int(bounds.high)})) && "
            f"(!has({p}.categorical) || {p}.categorical.values.all(v, {bounds.cel('v', True)})))"
        )
    else:
        ranges = " && ".join(
            f"(!has({p}.{d}) || ({bounds.cel(f'{p}.{d}.min', False)} && "
            f"{p}.{d}.max {'<=' if bounds.high_inclusive else '<'} {float(bounds.high)!r}))"
            for d in ("logUniform", "uniform")
        )
        cel = f"!has({p}) || ({ranges} && (!has({p}.categorical) || {p}.categorical.values.all(v, "
        cel += f"{bounds.cel('v', False)})))"

    def check(space: SearchSpace) -> bool:
        parameter = getattr(space, _attribute(path))
        if parameter is None:
            return True
        distribution = parameter.distribution()
        if isinstance(distribution, Choice):
            return all(v in bounds for v in distribution.values)
        if isinstance(distribution, Integers):
            # The top of the range as written, as CEL sees it (the sampled top may be lower).
            return distribution.low in bounds and parameter.int_range.max in bounds
        return distribution.low in bounds and distribution.high in bounds

    return Rule(
        cel,
        f"{path} takes values in {bounds.describe()}: every value the search can give must be one",
        check,
        f"['{path}']",
    )


def _names_rule(path: str, allowed: list[str]) -> Rule:
    p = f"self.{cel_name(path)}"
    return Rule(
        f"!has({p}) || {p}.categorical.values.all(v, v in {cel_list(allowed)})",
        f"{path} takes one of {allowed}",
        lambda space: (
            (parameter := getattr(space, _attribute(path))) is None
            or all(v in allowed for v in parameter.categorical.values)
        ),
        f"['{path}']",
    )


def _layer_rule(path: str) -> Rule:
    p = f"self.{cel_name(path)}"
    return Rule(
        f"!has({p}) || ((!has({p}.int) || {p}.int.min >= 0) && (!has({p}.categorical) || "
        f"{p}.categorical.values.all(v, type(v) == int ? v >= 0 : v.matches('{LAYER_NAME}'))))",
        f"{path} takes layer indexes >= 0 and layer names (letters, digits, _ . / : -)",
        lambda space: (
            (parameter := getattr(space, _attribute(path))) is None
            or (
                (parameter.int_range is None or parameter.int_range.min >= 0)
                and (
                    parameter.categorical is None
                    or all(
                        v >= 0 if isinstance(v, int) else re.fullmatch(LAYER_NAME, v) is not None
                        for v in parameter.categorical.values
                    )
                )
            )
        ),
        f"['{path}']",
    )


def _attribute(path: str) -> str:
    return next(name for name, p in PATHS.items() if p == path)


def _space_rules() -> tuple[Rule, ...]:
    """The rules of `SearchSpace`, one per parameter, from the fields the parameters land in."""
    rules = [
        Rule(
            " || ".join(f"has(self.{cel_name(p)})" for p in PATHS.values()),
            "parameters must name at least one template field to search",
            lambda space: bool(space.items()),
        )
    ]
    for name, path in PATHS.items():
        kind = _members_model(SearchSpace.model_fields[name].annotation)
        target = target_field(path)
        if kind is LayerParameter:
            rules.append(_layer_rule(path))
        elif kind is FloatParameter or kind is IntParameter:
            rules.append(_numeric_rule(path, integer=kind is IntParameter))
        elif kind is ChoiceParameter:
            literal = next((a for a in get_args(target.annotation) if get_origin(a) is Literal), None)
            allowed = list(get_args(literal or target.annotation)) if path != "model.base" else sorted(BASES)
            rules.append(_names_rule(path, allowed))
    return tuple(rules)


SearchSpace.rules = _space_rules()


# --------------------------------------------------------------------------- objective and algorithm


class Goal(str, Enum):
    """Which way the objective is better."""

    MAXIMIZE = "Maximize"
    MINIMIZE = "Minimize"


#: The metrics a sweep can optimise: the last epoch's (or the kept epoch's) and the test set's.
ObjectiveMetric = Literal["valAccuracy", "valLoss", "accuracy", "loss", "testAccuracy", "testLoss"]
LOSSES = ("valLoss", "loss", "testLoss")
#: The per-epoch metric the early-stopping rule watches for each objective: a test metric exists only
#: once a trial ends, so its validation twin stands in.
STOPPING_METRIC: dict[str, str] = {"testAccuracy": "valAccuracy", "testLoss": "valLoss"}


class Objective(ApiModel):
    """What makes one trial better than another."""

    rules = (
        Rule(
            f"!has(self.goal) || (self.metric in {cel_list(LOSSES)}) == (self.goal == 'Minimize')",
            "goal must be Minimize for a loss and Maximize for an accuracy (it may be left out)",
            lambda m: m.goal is None or (m.metric in LOSSES) == (m.goal is Goal.MINIMIZE),
            ".goal",
        ),
    )

    metric: ObjectiveMetric = Field(
        description="valAccuracy, valLoss, accuracy or loss: the trial's value at its kept epoch (the best "
        "epoch when the template restores the best weights, else the last); testAccuracy or testLoss: "
        "its test-set evaluation."
    )
    goal: Goal | None = Field(
        default=None,
        strict=False,  # the enum's values, as strings
        description="Maximize or Minimize; by default Minimize for a loss, Maximize for an accuracy.",
    )

    @property
    def direction(self) -> Goal:
        """The goal, given or implied by the metric."""
        return self.goal or (Goal.MINIMIZE if self.metric in LOSSES else Goal.MAXIMIZE)

    @property
    def stopping_metric(self) -> str:
        """The per-epoch metric early stopping compares trials by (the objective, or its val twin)."""
        return STOPPING_METRIC.get(self.metric, self.metric)


class AlgorithmName(str, Enum):
    """How the next trial's parameters are chosen."""

    GRID = "Grid"
    RANDOM = "Random"
    TPE = "TPE"


class Algorithm(ApiModel):
    """The search algorithm and its seed."""

    name: AlgorithmName = Field(
        default=AlgorithmName.RANDOM,
        strict=False,
        description="Grid: every combination of categorical values and int ranges, in a fixed order "
        "(parameters sorted by path, the last varying fastest); Random: independent samples; TPE: "
        "Optuna's Tree-structured Parzen Estimator, random for the first trials, then guided by the "
        "finished ones.",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="Random and TPE draw trial n's parameters from (seed, n) and the trials recorded "
        "before it, so a sweep replays the same way after an operator restart.",
    )


class StoppingRule(str, Enum):
    """Early stopping of unpromising trials."""

    NONE = "None"
    MEDIAN = "Median"


class SweepEarlyStopping(ApiModel):
    """Stop trials that are doing worse than the finished ones did at the same epoch (median rule).

    After a trial's epoch e (e >= minEpochs), take the trials that succeeded, at least minTrials of
    them, each with its running average of the stopping metric over its first e epochs (or all of its
    epochs, if it ran fewer). The trial is stopped when its best value so far is strictly worse than
    the median of those averages. The stopping metric is the objective, or for a test metric its
    validation twin (testAccuracy: valAccuracy, testLoss: valLoss).
    """

    rule: StoppingRule = Field(
        default=StoppingRule.NONE, strict=False, description="None, or Median (the rule above)."
    )
    min_epochs: int = Field(
        default=2, ge=1, le=10000, description="Epochs every trial runs before the rule may stop it."
    )
    min_trials: int = Field(
        default=3,
        ge=1,
        le=MAX_TRIALS,
        description="Succeeded trials the rule needs before it stops any: a median of fewer says little.",
    )


# ------------------------------------------------------------------------------------------- spec


class TransferJobTemplate(TransferJobSpec):
    """A TransferJob spec as a sweep's template: validated like one, but its mode-dependent defaults
    (epochs, learningRate, fineTuneAt) left unresolved, so that a trial which searches `model.base`
    gets the fineTuneAt of its own base, not the template's. The sweep's own rule makes it immutable."""

    wire_path = "spec.template"
    rules = tuple(r for r in TransferJobSpec.rules if "oldSelf" not in r.cel)

    @model_validator(mode="after")
    def _mode_defaults(self) -> TransferJobTemplate:
        """Replaces TransferJobSpec's resolution of the mode's defaults: each trial resolves its own."""
        return self


_FLOAT_PATHS = [
    p for n, p in PATHS.items() if _members_model(SearchSpace.model_fields[n].annotation) is FloatParameter
]

_IMMUTABLE_SWEEP = (
    "self.template == oldSelf.template && self.parameters == oldSelf.parameters && "
    "self.objective == oldSelf.objective && self.algorithm == oldSelf.algorithm && "
    "self.maxTrials == oldSelf.maxTrials && self.maxFailedTrials == oldSelf.maxFailedTrials && "
    "self.earlyStopping == oldSelf.earlyStopping"
)


def _grid_rule(path: str) -> Rule:
    p = f"self.parameters.{cel_name(path)}"
    return Rule(
        f"self.algorithm.name != 'Grid' || !has({p}) || has({p}.categorical)",
        f"Grid enumerates values: give {path} as categorical values (a uniform or logUniform range has "
        "no grid points), or use Random or TPE",
        lambda spec: (
            spec.algorithm.name is not AlgorithmName.GRID
            or (parameter := getattr(spec.parameters, _attribute(path))) is None
            or parameter.categorical is not None
        ),
        f".parameters['{path}']",
    )


class TransferSweepSpec(ApiModel):
    """A search over TransferJobs. Immutable once created, except parallelTrials and suspend."""

    wire_path = "spec"

    rules = (
        Rule(
            "self.parallelTrials <= self.maxTrials",
            "parallelTrials must not exceed maxTrials",
            lambda m: m.parallel_trials <= m.max_trials,
            ".parallelTrials",
        ),
        *[_grid_rule(path) for path in _FLOAT_PATHS],
        Rule(
            "!has(self.parameters.model__dot__fineTuneAt) || self.template.mode == 'FineTuning'",
            "model.fineTuneAt can only be searched when the template's mode is FineTuning",
            lambda m: m.parameters.model_fine_tune_at is None or m.template.mode is Mode.FINE_TUNING,
            ".parameters['model.fineTuneAt']",
        ),
        Rule(
            _IMMUTABLE_SWEEP,
            "spec is immutable except parallelTrials and suspend; delete and recreate the TransferSweep "
            "instead",
            reason="FieldValueForbidden",
        ),
    )
    cel_ints = frozenset({"maxTrials", "parallelTrials"})

    template: TransferJobTemplate = Field(
        description="The TransferJob spec every trial starts from. Each trial writes its output to its own "
        "sub-folder of template.output.location, named after the trial."
    )
    parameters: SearchSpace = Field(description="The template fields to search, by path, and how.")
    objective: Objective = Field(description="The metric that ranks trials.")
    algorithm: Algorithm = Field(default_factory=Algorithm, description="How trials are chosen.")
    max_trials: int = Field(
        default=10,
        ge=1,
        le=MAX_TRIALS,
        description="Trials in all (a Grid sweep stops sooner when its grid is exhausted).",
    )
    parallel_trials: int = Field(default=1, ge=1, le=MAX_TRIALS, description="Trials running at once.")
    max_failed_trials: int = Field(
        default=3,
        ge=0,
        le=MAX_TRIALS,
        description="Failed trials the sweep tolerates: one more fails the sweep. A trial stopped by "
        "early stopping has not failed.",
    )
    early_stopping: SweepEarlyStopping = Field(
        default_factory=SweepEarlyStopping, description="Stopping unpromising trials early."
    )
    suspend: bool = Field(default=False, description="Start no trials, and suspend the running ones.")


# ------------------------------------------------------------------------------------------ status


class TrialPhase(str, Enum):
    """Where a trial is in its life."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    #: Stopped by the sweep's early-stopping rule (not the trainer's own early stopping).
    STOPPED = "Stopped"


FINISHED_TRIAL_PHASES = frozenset({TrialPhase.SUCCEEDED, TrialPhase.FAILED, TrialPhase.STOPPED})

#: A parameter's value on `.status`: the type of its field (number, integer, name or switch), so the
#: schema keeps any JSON scalar.
StatusValue = Annotated[ParameterValue, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]


class TrialStatus(ApiModel):
    """One trial: its parameters and how it went."""

    index: int = Field(ge=0, description="Trial number, from 0, in the order trials were started.")
    name: str = Field(description="The child TransferJob, <sweep>-<index>.")
    parameters: dict[str, StatusValue] = Field(
        description="The values this trial was given, by path (as spec.parameters names them)."
    )
    phase: TrialPhase = Field(
        default=TrialPhase.PENDING,
        strict=False,
        description="Pending, Running, Succeeded, Failed, or Stopped (by the sweep's early stopping).",
    )
    objective: OptionalMetric = Field(
        default=None, description="The objective metric's value, once the trial has one."
    )
    epochs: int | None = Field(default=None, description="Epochs the trial finished.")
    curve: list[OptionalMetric] = Field(
        default_factory=list,
        max_length=CURVE_LIMIT,
        description=f"The stopping metric per epoch (index 0 is epoch 1), the first {CURVE_LIMIT} epochs; "
        "null where an epoch reported none.",
    )
    message: str = Field(default="", description="Why the trial failed or was stopped.")


class BestTrial(ApiModel):
    """The succeeded trial with the best objective."""

    index: int = Field(description="Its trial number.")
    name: str = Field(description="Its TransferJob.")
    objective: Metric = Field(description="Its objective value.")
    model: ModelArtifacts | None = Field(default=None, description="Where its model was exported.")


class TransferSweepStatus(ApiModel):
    """What the operator observed. Written only through the status subresource."""

    wire_path = "status"

    phase: Phase | None = Field(
        default=None, strict=False, description="Pending, Running, Succeeded, Failed or Suspended."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Conditions, one per type.")
    start_time: dt.datetime | None = Field(
        default=None, strict=False, description="When the first trial started."
    )
    completion_time: dt.datetime | None = Field(
        default=None, strict=False, description="When the sweep succeeded or failed."
    )
    trials: list[TrialStatus] = Field(
        default_factory=list, max_length=MAX_TRIALS, description="Every trial started, by index."
    )
    finished_trials: int | None = Field(default=None, description="Trials that succeeded, failed or stopped.")
    running_trials: int | None = Field(default=None, description="Trials pending or running.")
    failed_trials: int | None = Field(default=None, description="Trials that failed.")
    best_trial: BestTrial | None = Field(default=None, description="The best trial so far, and its model.")
    observed_generation: int | None = Field(default=None, description="Spec generation last acted on.")


# ------------------------------------------------------------------------------------------ object


class TransferSweep(ApiModel):
    """A TransferSweep resource: what `kubectl get tsw -o yaml` shows."""

    rules = (
        # No fieldPath: the CRD's root schema declares no metadata fields to point at.
        Rule(
            f"self.metadata.name.size() <= {MAX_SWEEP_NAME}",
            f"metadata.name must be at most {MAX_SWEEP_NAME} characters: trials are named "
            "<name>-<index> and a TransferJob name is at most 63",
            lambda m: m.metadata.name is None or len(m.metadata.name) <= MAX_SWEEP_NAME,
        ),
    )

    api_version: Literal["transferjob.io/v1alpha1"] = API_VERSION
    kind: Literal["TransferSweep"] = SWEEP_KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TransferSweepSpec
    status: TransferSweepStatus | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> TransferSweep:
        """Parse a manifest or an API object."""
        return cls.model_validate(obj)

    @classmethod
    def from_yaml(cls, text: str) -> TransferSweep:
        """Parse one YAML document."""
        return cls.from_dict(yamlio.load(text))

    def to_yaml(self) -> str:
        """The manifest as `kubectl apply -f` takes it."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_sweep_spec(obj: dict[str, Any]) -> TransferSweepSpec:
    """Validate a sweep spec dict, raising `SpecError` whose lines name each bad field (`spec.…`)."""
    return TransferSweepSpec.model_validate(obj)
