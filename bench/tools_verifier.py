"""A resources server for the tool-loop benchmark: one cheap tool and an exact-match verify."""

from __future__ import annotations

from typing import Any

from rollgate.verifier import ResourcesServer, tool


class BenchTools(ResourcesServer):
    version = "bench-tools-1"

    @tool
    def whoami(self, i: int = 0) -> dict[str, Any]:
        return {"i": i}

    def verify(self, task: dict[str, Any], response: dict[str, Any]) -> float:
        # The fake model ends with "say: A<i>" text after its tool calls.
        for item in reversed(response.get("output", [])):
            if item.get("type") == "message":
                text = "".join(part.get("text", "") for part in item.get("content", []))
                return float(text.strip() == task["expected_answer"])
        return 0.0
