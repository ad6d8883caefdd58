"""Type aliases that the SDK, the operator, the tests and the benchmarks share, defined once."""

from __future__ import annotations

from typing import Any, TypeAlias

#: A Kubernetes object or any other JSON document, as the API clients hand them over.
Json: TypeAlias = dict[str, Any]
