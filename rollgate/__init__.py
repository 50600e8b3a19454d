"""rollgate: collect LLM rollouts for post-training.

One import package with a sub-package per service room; each is used on its own:

    from rollgate.verifier import ResourcesServer, tool     # write a verifier
    from rollgate.collector import collect_main              # run a collection from Python

The rooms live in the repository's top-level folders (``collector/``, ``gateway/``, ``verifier/``, ``protos/``)
and are mapped in here when the package is built or installed. Nothing is imported eagerly: ``import rollgate``
costs nothing, so the console scripts start fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
