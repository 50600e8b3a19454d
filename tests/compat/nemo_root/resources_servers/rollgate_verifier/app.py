"""NeMo Gym starts this file as it starts any resources server's ``app.py``; it becomes a rollgate verifier.

NeMo Gym (``ng_run``) gives each server its host and port in the ``NEMO_GYM_CONFIG_DICT`` environment variable
(the whole run's config as YAML) and the server's own config key in ``NEMO_GYM_CONFIG_PATH``. This replaces itself
with ``python -m rollgate.verifier serve TARGET`` on that host and port, run by the interpreter named in
``ROLLGATE_PYTHON`` (the compatibility suite's own) with the suite's ``PYTHONPATH`` (``ROLLGATE_PYTHONPATH``; NeMo Gym
puts its server directory there), so NeMo Gym's agents and collector talk to the same rollgate verifier code the
suite tests, at the address NeMo Gym assigned. ``TARGET`` is the server config's ``rollgate_target``.
"""

from __future__ import annotations

import os
import sys

import yaml


def main() -> None:
    config = yaml.safe_load(os.environ["NEMO_GYM_CONFIG_DICT"])
    server = config[os.environ["NEMO_GYM_CONFIG_PATH"]]["resources_servers"]["rollgate_verifier"]
    python = os.environ.get("ROLLGATE_PYTHON")
    if not python:
        sys.exit("ROLLGATE_PYTHON is not set: it names the Python that has rollgate installed")
    argv = [python, "-m", "rollgate.verifier", "serve", str(server["rollgate_target"]),
            "--host", str(server["host"]), "--port", str(server["port"])]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if os.environ.get("ROLLGATE_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["ROLLGATE_PYTHONPATH"]
    sys.stdout.flush()
    os.execve(python, argv, env)


if __name__ == "__main__":
    main()
