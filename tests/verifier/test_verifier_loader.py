"""load_target: one clear message per failure mode, the kinds of target, and versions."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rollgate.verifier.hosting import VerifierLoadError, load_target

WriteModule = Callable[..., str]


def _load_error(spec: str) -> str:
    with pytest.raises(VerifierLoadError) as info:
        load_target(spec)
    assert info.value.spec == spec
    return str(info.value)


def test_no_colon_lists_the_builtins() -> None:
    message = _load_error("my_verifier")
    assert "MODULE:ATTR" in message
    assert "built-ins: contains, exact_match, json_schema" in message


def test_near_builtin_name_is_suggested() -> None:
    assert "did you mean the built-in 'exact_match'" in _load_error("exact-match")


def test_empty_parts() -> None:
    assert "both parts" in _load_error("mod:")


def test_missing_module_is_named(user_module: WriteModule) -> None:
    message = _load_error("no_such_module_xyz:verify")
    assert "module 'no_such_module_xyz' not found" in message


def test_module_importing_a_missing_dependency(user_module: WriteModule) -> None:
    name = user_module("import not_installed_dep_xyz\n")
    message = _load_error(f"{name}:verify")
    assert "'not_installed_dep_xyz', which is not installed" in message
    assert f"{name}.py:1" in message


def test_syntax_error_shows_file_and_line(user_module: WriteModule) -> None:
    name = user_module("x = 1\n\ndef verify(task, response)\n    return 1.0\n")
    message = _load_error(f"{name}:verify")
    assert re.search(rf"{name}\.py:3: SyntaxError", message), message
    assert "def verify(task, response)" in message


def test_import_that_raises_shows_type_file_and_line(user_module: WriteModule) -> None:
    name = user_module("A = 1\nB = A / 0\n")
    message = _load_error(f"{name}:verify")
    assert "raised ZeroDivisionError: division by zero" in message
    assert f"{name}.py:2" in message


def test_missing_attribute_names_module_and_near_match(user_module: WriteModule) -> None:
    name = user_module("def verify(task, response):\n    return 1.0\n")
    message = _load_error(f"{name}:verfy")
    assert f"module '{name}' has no attribute 'verfy'" in message
    assert "did you mean 'verify'?" in message


def test_not_callable(user_module: WriteModule) -> None:
    name = user_module("verify = 42\n")
    message = _load_error(f"{name}:verify")
    assert "int object is not callable" in message


def test_class_that_is_not_a_resources_server(user_module: WriteModule) -> None:
    name = user_module("class Thing:\n    def verify(self, task, response):\n        return 1.0\n")
    assert "not a verifier.ResourcesServer subclass" in _load_error(f"{name}:Thing")


def test_resources_server_without_verify(user_module: WriteModule) -> None:
    name = user_module("from rollgate.verifier import ResourcesServer\nclass S(ResourcesServer):\n    pass\n")
    assert "does not define verify" in _load_error(f"{name}:S")


def test_verify_with_the_wrong_signature(user_module: WriteModule) -> None:
    name = user_module("def verify(response):\n    return 1.0\n")
    assert "verify must accept (task, response)" in _load_error(f"{name}:verify")


def test_constructor_that_raises(user_module: WriteModule) -> None:
    name = user_module(
        "from rollgate.verifier import ResourcesServer\n"
        "class S(ResourcesServer):\n"
        "    def __init__(self):\n        raise RuntimeError('no db')\n"
        "    def verify(self, task, response):\n        return 1.0\n"
    )
    assert "creating S() raised RuntimeError: no db" in _load_error(f"{name}:S")


def test_reserved_tool_name(user_module: WriteModule) -> None:
    name = user_module(
        "from rollgate.verifier import ResourcesServer, tool\n"
        "class S(ResourcesServer):\n"
        "    @tool(name='healthz')\n    def h(self):\n        return {}\n"
        "    def verify(self, task, response):\n        return 1.0\n"
    )
    assert "tool name 'healthz'" in _load_error(f"{name}:S")
    batch = user_module(
        "from rollgate.verifier import ResourcesServer, tool\n"
        "class S(ResourcesServer):\n"
        "    @tool\n    def verify_batch(self):\n        return {}\n"
        "    def verify(self, task, response):\n        return 1.0\n"
    )
    assert "tool name 'verify_batch'" in _load_error(f"{batch}:S")


def test_kinds_of_target(user_module: WriteModule) -> None:
    name = user_module(
        "from rollgate.verifier import ResourcesServer, tool\n"
        "def verify(task, response):\n    return 1.0\n"
        "async def averify(task, response):\n    return 1.0\n"
        "class S(ResourcesServer):\n"
        "    @tool\n    def a(self, x: int) -> int:\n        return x\n"
        "    @tool(name='b-tool')\n    async def b(self, session):\n        return {}\n"
        "    def verify(self, task, response):\n        return 1.0\n"
    )
    plain = load_target(f"{name}:verify")
    assert (plain.kind, plain.verify.is_async, plain.name) == ("function", False, f"{name}:verify")
    assert plain.source_files == (Path(f"{name}.py").resolve(),)
    assert load_target(f"{name}:averify").verify.is_async
    server = load_target(f"{name}:S")
    assert server.kind == "resources_server"
    assert sorted(server.tools) == ["a", "b-tool"]
    assert server.tools["b-tool"].wants_session and not server.tools["a"].wants_session
    assert server.seed_hook is None and server.close_hook is None
    builtin = load_target("exact_match")
    assert builtin.kind == "builtin" and builtin.source_files == ()


def test_declared_versions(user_module: WriteModule) -> None:
    name = user_module("__verifier_version__ = 'v7'\ndef verify(task, response):\n    return 1.0\n")
    assert load_target(f"{name}:verify").version == "v7"
    name = user_module(
        "from rollgate.verifier import ResourcesServer\n"
        "class S(ResourcesServer):\n    version = '2024.1'\n"
        "    def verify(self, task, response):\n        return 1.0\n"
    )
    assert load_target(f"{name}:S").version == "2024.1"
    name = user_module("__verifier_version__ = 'bad\\nversion'\ndef verify(task, response):\n    return 1.0\n")
    assert "printable ASCII" in _load_error(f"{name}:verify")
    assert re.fullmatch(r"exact_match@\S+", load_target("exact_match").version)


def test_source_hash_version_follows_the_file(user_module: WriteModule, tmp_path: Path) -> None:
    name = user_module("def verify(task, response):\n    return 1.0\n")
    first = load_target(f"{name}:verify")
    assert re.fullmatch(r"sha256:[0-9a-f]{12}", first.version)
    assert load_target(f"{name}:verify").version == first.version  # stable
    # Same size, rewritten at once: a stale .pyc would still run the old code if the loader did not drop it.
    (tmp_path / f"{name}.py").write_text("def verify(task, response):\n    return 0.0\n")
    second = load_target(f"{name}:verify", fresh=True)
    assert second.version != first.version
    assert second.verify.fn({}, {}) == 0.0


def test_fresh_reload_picks_up_new_code(user_module: WriteModule, tmp_path: Path) -> None:
    name = user_module("def verify(task, response):\n    return {'reward': 1.0, 'gen': 1}\n")
    assert load_target(f"{name}:verify").verify.fn({}, {})["gen"] == 1
    time.sleep(0.01)
    (tmp_path / f"{name}.py").write_text("def verify(task, response):\n    return {'reward': 1.0, 'gen': 22}\n")
    assert load_target(f"{name}:verify", fresh=True).verify.fn({}, {})["gen"] == 22


def test_dotted_attribute(user_module: WriteModule) -> None:
    name = user_module("class NS:\n    @staticmethod\n    def verify(task, response):\n        return 1.0\n")
    assert load_target(f"{name}:NS.verify").kind == "function"
    assert f"{name}:NS has no attribute 'verfy'" in _load_error(f"{name}:NS.verfy")


