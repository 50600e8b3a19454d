"""Write a verifier: the authoring API of rollgate's verifier room.

A verifier is a ``verify(task, response) -> float | dict`` function (sync or async) or a ``ResourcesServer``
subclass with ``@tool`` methods and per-rollout ``Session`` state; either is served over the NeMo Gym
resources-server protocol by ``rollgate verifier serve MODULE:ATTR``:

    # my_env.py
    from rollgate.verifier import ResourcesServer, Session, tool

    class Counter(ResourcesServer):
        @tool
        def add(self, session: Session, k: int) -> dict[str, int]:
            session.state["n"] = session.state.get("n", 0) + k
            return {"n": session.state["n"]}

        def verify(self, task: dict, response: dict, session: Session) -> float:
            return float(session.state.get("n") == task["target"])

``InvalidTask`` rejects a task row that cannot be scored; ``LLMJudge`` grades with a model. Running a verifier
in-process (tests, embedding) lives in ``rollgate.verifier.hosting``; the wire bodies are typed in
``rollgate.verifier.protocol``. Built-ins served by name: exact_match, contains, regex, multiple_choice, math,
json_schema, llm_judge, reasoning_gym.
"""

from __future__ import annotations

from rollgate.verifier._base import ResourcesServer, Session, tool
from rollgate.verifier._judge import LLMJudge
from rollgate.verifier.errors import InvalidTask

__all__ = ["InvalidTask", "LLMJudge", "ResourcesServer", "Session", "tool"]
