"""values.yaml, values.schema.json and their comments stay in step; the schema rejects bad values clearly."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helm.chart import CHART, CI_VALUES, ci_values, render_error

VALUES_TEXT = (CHART / "values.yaml").read_text(encoding="utf-8")
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<dash>- )?(?P<key>[A-Za-z0-9_.\-/]+):(?:\s|$)")


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local $ref and fold allOf branches into one node with all their properties."""
    if "$ref" in node:
        ref = node["$ref"].removeprefix("#/").split("/")
        target: Any = SCHEMA
        for part in ref:
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if "allOf" in node:
        props = dict(node.get("properties", {}))
        for branch in node["allOf"]:
            props.update(_resolve(branch).get("properties", {}))
        node = {**node, "properties": props}
    return node


def _child(node: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The schema of ``key`` inside ``node`` (through list items), or None when the schema does not know it."""
    node = _resolve(node)
    if node.get("type") == "array":
        node = _resolve(node.get("items", {}))
    if key in node.get("properties", {}):
        return _resolve(node["properties"][key])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        return _resolve(extra)
    return None


def _is_fixed(node: dict[str, Any]) -> bool:
    """An object whose keys the chart defines (not a free-form Kubernetes object or a oneOf)."""
    node = _resolve(node)
    if node.get("type") == "array":
        node = _resolve(node.get("items", {}))
    return "properties" in node or isinstance(node.get("additionalProperties"), dict)


def _walk(value: Any, node: dict[str, Any], path: str, problems: list[str]) -> None:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict):
            continue
        for key, sub in item.items():
            child = _child(node, key)
            if child is None:
                problems.append(f"values.yaml has {path}{key}, values.schema.json does not")
            elif _is_fixed(child):
                _walk(sub, child, f"{path}{key}.", problems)
        # The reverse: a schema property that values.yaml never shows is undocumented (empty defaults excepted).
        resolved = _resolve(node)
        if resolved.get("type") == "array":
            resolved = _resolve(resolved.get("items", {}))
        if item and "properties" in resolved and "allOf" not in node:
            for key in resolved["properties"]:
                if key not in item:
                    problems.append(f"values.schema.json has {path}{key}, values.yaml does not")


def test_values_yaml_matches_its_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft7Validator(SCHEMA)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(VALUES)]
    assert errors == []


def test_schema_and_values_have_the_same_keys() -> None:
    problems: list[str] = []
    _walk(VALUES, SCHEMA, "", problems)
    assert problems == []


def test_schema_walk_notices_a_missing_key() -> None:
    # The in-step check above can fail: a key the schema does not list is reported.
    problems: list[str] = []
    _walk({**VALUES, "gateway": {**VALUES["gateway"], "replicaz": 1}}, SCHEMA, "", problems)
    assert problems == ["values.yaml has gateway.replicaz, values.schema.json does not"]


def test_every_value_is_commented() -> None:
    lines = VALUES_TEXT.splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for number, line in enumerate(lines):
        m = KEY_LINE.match(line)
        if not m:
            continue
        column = len(m["indent"]) + (2 if m["dash"] else 0)
        while stack and stack[-1][0] >= column:
            stack.pop()
        path = [key for _, key in stack] + [m["key"]]
        stack.append((column, m["key"]))
        node: dict[str, Any] | None = SCHEMA
        for key in path[:-1]:
            node = _child(node, key) if node is not None and _is_fixed(node) else None
        if node is None or not _is_fixed(node):
            continue  # inside a free-form Kubernetes object (securityContext …): documented by its parent
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#") and not lines[above].strip().startswith("# --"):
            above -= 1
        if above < 0 or not lines[above].strip().startswith("# --"):
            missing.append(".".join(path))
    assert missing == []


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_ci_values_only_use_schema_keys(values: Any) -> None:
    problems: list[str] = []
    _walk(yaml.safe_load(values.read_text(encoding="utf-8")), SCHEMA, "", problems)
    assert [p for p in problems if p.startswith("values.yaml has")] == []


def test_schema_rejects_a_wrong_type_with_a_clear_message() -> None:
    err = render_error([ci_values("cpu")], set_strings=["gateway.replicas=two"])
    assert "/gateway/replicas" in err and "want integer" in err


def test_schema_rejects_a_misspelt_key() -> None:
    err = render_error([ci_values("cpu")], sets=["gateway.replica=3"])
    assert "replica" in err and "not allowed" in err


def test_schema_rejects_a_bad_agent_kind() -> None:
    err = render_error([ci_values("cpu")], sets=["agents.my_agent.kind=multi_turn"])
    assert "/agents/my_agent/kind" in err and "tool_calling" in err
