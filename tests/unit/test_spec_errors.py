"""Every public way of building a spec raises `SpecError`: one line per problem, each naming the field
by its wire (camelCase) path, pydantic's `ValidationError` kept as the cause."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from transferjob import (
    DataSpec,
    Location,
    SpecError,
    TransferJob,
    TransferJobSpec,
    TransferJobStatus,
)

BAD_SPEC: dict[str, Any] = {
    "data": {"source": {"hostPath": "/d"}},
    "output": {"location": {"hostPath": "/o"}},
    "training": {"learningRate": -1.0, "batchSize": "16"},
}
BAD_LINES = [
    "spec.training.batchSize: Input should be a valid integer",
    "spec.training.learningRate: Input should be greater than 0",
]
MANIFEST = (
    "apiVersion: transferjob.io/v1alpha1\nkind: TransferJob\nmetadata: {name: bad}\nspec:\n"
    "  data: {source: {hostPath: /d}}\n  output: {location: {hostPath: /o}}\n"
    "  training: {learningRate: -1.0, batchSize: '16'}\n"
)

ENTRIES: dict[str, Callable[[], object]] = {
    "TransferJob.from_yaml": lambda: TransferJob.from_yaml(MANIFEST),
    "TransferJob.from_dict": lambda: TransferJob.from_dict({"spec": BAD_SPEC}),
    "TransferJob.model_validate": lambda: TransferJob.model_validate({"spec": BAD_SPEC}),
    "TransferJobSpec.model_validate": lambda: TransferJobSpec.model_validate(BAD_SPEC),
    "TransferJobSpec.model_validate_json": lambda: TransferJobSpec.model_validate_json(
        '{"data": {"source": {"hostPath": "/d"}}, "output": {"location": {"hostPath": "/o"}},'
        ' "training": {"learningRate": -1.0, "batchSize": "16"}}'
    ),
    "TransferJobSpec(...)": lambda: TransferJobSpec(**BAD_SPEC),
    "TransferJob(spec=...)": lambda: TransferJob(spec=BAD_SPEC),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("entry", ENTRIES, ids=list(ENTRIES))
def test_each_entry_raises_spec_error_naming_the_fields(entry: str) -> None:
    with pytest.raises(SpecError) as caught:
        ENTRIES[entry]()
    assert sorted(caught.value.problems) == BAD_LINES
    assert str(caught.value) == "; ".join(caught.value.problems)
    assert type(caught.value.__cause__).__name__ == "ValidationError"


def test_a_nested_model_built_alone_names_its_own_fields() -> None:
    with pytest.raises(SpecError) as caught:
        Location(host_path="relative/path")
    assert caught.value.problems == ["hostPath: String should match pattern '^/'"]
    with pytest.raises(SpecError) as caught:
        Location()
    assert caught.value.problems == ["Location: exactly one of pvc, hostPath or uri must be set"]
    # Inside a larger model, the same problem is one line of the outer model's error, with its path.
    with pytest.raises(SpecError) as caught:
        DataSpec.model_validate({"source": {}, "trainDir": ""})
    assert sorted(caught.value.problems) == [
        "source: exactly one of pvc, hostPath or uri must be set",
        "trainDir: String should have at least 1 character",
    ]


def test_status_and_metadata_problems_are_named_too() -> None:
    with pytest.raises(SpecError) as caught:
        TransferJobStatus.model_validate({"phase": "Done"})
    assert caught.value.problems[0].startswith("status.phase: Input should be 'Pending'")
    with pytest.raises(SpecError) as caught:
        TransferJob.from_dict({"metadata": {"name": "x" * 64}, "spec": BAD_SPEC | {"training": {}}})
    assert caught.value.problems == ["metadata.name: String should have at most 63 characters"]


def test_revalidated_catches_what_attribute_assignment_let_through() -> None:
    job = TransferJob.from_dict({"metadata": {"name": "ok"}, "spec": BAD_SPEC | {"training": {}}})
    job.metadata.name = "x" * 64
    job.spec.training.batch_size = 0
    with pytest.raises(SpecError) as caught:
        job.revalidated()
    assert sorted(caught.value.problems) == [
        "metadata.name: String should have at most 63 characters",
        "spec.training.batchSize: Input should be greater than or equal to 1",
    ]
    job.metadata.name = "ok-again"
    job.spec.training.batch_size = 8
    assert job.revalidated() == job
