"""YAML read as `kubectl` reads it, so one manifest means the same to `tj` and to `kubectl apply`.

PyYAML implements YAML 1.1, whose float rule requires a dot: `1e-5` (and the `1e-05` that Python's
`json.dumps` writes for a small learning rate) is a *string* to `yaml.safe_load`, a float to kubectl
(sigs.k8s.io/yaml parses it as a number), and a float in JSON. Strict validation would then reject a
manifest kubectl accepts. `Loader` adds the YAML 1.2 / JSON float forms.

PyYAML also keeps the last of two equal keys in a mapping without a word, where kubectl refuses the
manifest ("mapping key already defined") and strict field validation reports a duplicate field; a
repeated key is most likely a mistake (a sweep that names one parameter path twice), so `Loader`
refuses it too.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

#: Floats with an exponent and no dot (`1e-5`, `2E3`, `-1e+07`): YAML 1.2 and JSON numbers.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


class Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `1e-5` as a float and refuses a key repeated in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: the keys written beside it override it, as YAML means
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load(text: str) -> Any:
    """One YAML (or JSON) document."""
    return yaml.load(text, Loader=Loader)


def load_all(text: str) -> list[Any]:
    """Every document of a YAML stream."""
    return list(yaml.load_all(text, Loader=Loader))
