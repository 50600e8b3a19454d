"""``rollgate up``: a local stack — the embedded model when asked, each local verifier, then a gateway.

Each service is a subprocess that prints one ready JSON line on stdout (docs/INTERNALS.md); its stderr is ours.
When the gateway is ready, ``rollgate up`` prints ``rollgate up: gateway ready at HOST:PORT (agents: …)`` on
stderr and ``{"event": "ready", "service": "stack", "address": …, "agents": […]}`` on stdout. SIGINT/SIGTERM stop
every child (terminate, then kill after a grace) and exit 0; a child that dies takes the stack down, exit 1.
The gateway's admin API is on, with a fresh token that ``rollgate gateway set`` finds by itself
(``rollgate._local_admin``), so routes can be changed on a local stack without any set-up.

Children run in their own session so a terminal's Ctrl-C reaches only us and we stop them in order (a child
dying of the same Ctrl-C first would otherwise look like a crash).

    rollgate up --model-url http://127.0.0.1:8000/v1 --model smollm2 --verifier exact_match --agents my_agent
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from rollgate._cli import parse_cli, run_cli
from rollgate._local_admin import remove_token, write_token
from rollgate._parent import child_env
from rollgate.collector._children import parse_ready
from rollgate.collector.errors import CollectorError, StackError
from rollgate.collector.stack._stackfile import StackFile, UpConfig, load_stack

__all__ = ["Launcher", "up_main"]

_STOP_GRACE_S = 10.0
# The variable the gateway reads its admin token from by default (``--admin-token-env``).
ADMIN_TOKEN_ENV = "ROLLGATE_ADMIN_TOKEN"


class _Embedded(Protocol):
    base_url: str
    model: str
    api: str

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Launcher:
    """The commands that start each service; tests swap in fakes."""

    verifier: Callable[[str], list[str]] = lambda target: [
        sys.executable, "-m", "rollgate.verifier", "serve", target, "--host", "127.0.0.1", "--port", "0",
    ]
    gateway: Callable[[str, str, int], list[str]] = lambda config, host, port: [
        sys.executable, "-m", "rollgate.gateway", "serve", "--config", config, "--host", host, "--port", str(port),
    ]


@dataclass
class _Child:
    name: str
    proc: asyncio.subprocess.Process
    drain: asyncio.Task[None] | None = None


@dataclass
class _Stack:
    children: list[_Child] = field(default_factory=list)
    embedded: _Embedded | None = None
    # The gateway address whose admin token file this stack wrote (removed on stop).
    token_for: str | None = None

    async def spawn(self, name: str, argv: list[str], timeout_s: float,
                    env: dict[str, str] | None = None) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=None, start_new_session=True, env=child_env(env)
        )
        child = _Child(name, proc)
        self.children.append(child)
        try:
            ready = await asyncio.wait_for(_read_ready(child), timeout_s)
        except TimeoutError:
            raise StackError(f"{name} did not print its ready line within {timeout_s:g} s") from None
        child.drain = asyncio.create_task(_forward(child))
        return ready

    async def wait_for_exit(self) -> _Child:
        waits = {asyncio.create_task(c.proc.wait()): c for c in self.children}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return waits[next(iter(done))]
        finally:
            for task in waits:
                task.cancel()

    async def stop(self) -> None:
        # The gateway first (it was started last), so it never sees its verifier vanish mid-rollout.
        for child in reversed(self.children):
            await _stop_child(child)
        self.children.clear()
        if self.token_for is not None:
            remove_token(self.token_for)
            self.token_for = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None


async def _read_ready(child: _Child) -> dict[str, Any]:
    assert child.proc.stdout is not None
    while True:
        line = await child.proc.stdout.readline()
        if not line:
            status = await child.proc.wait()
            raise StackError(f"{child.name} exited with status {status} before it was ready (its stderr is above)")
        event = parse_ready(line)
        if event is not None:
            return event
        sys.stderr.write(f"[{child.name}] {line.decode(errors='replace')}")


async def _forward(child: _Child) -> None:
    # Keep reading so a chatty child never blocks on a full pipe; its stdout goes to our stderr (ours is for the
    # ready line only).
    assert child.proc.stdout is not None
    while line := await child.proc.stdout.readline():
        sys.stderr.write(f"[{child.name}] {line.decode(errors='replace')}")


async def _stop_child(child: _Child) -> None:
    proc = child.proc
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if child.drain is not None:
        child.drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await child.drain


def _gateway_config(stack: StackFile, model_urls: dict[str, dict[str, Any]], verifier_urls: dict[str, str]) -> dict[
    str, Any
]:
    agents: dict[str, Any] = {}
    for name, agent in stack.agents.items():
        entry: dict[str, Any] = {"model": model_urls[agent.model], "verifier_url": verifier_urls[agent.verifier]}
        entry.update(agent.gateway_fields())
        agents[name] = entry
    return {"agents": agents}


async def _start(stack: StackFile, cfg: UpConfig, running: _Stack, launcher: Launcher,
                 workdir: Path) -> tuple[str, str | None]:
    """Start everything; return the gateway's address and its metrics URL (when it reports one)."""
    models: dict[str, dict[str, Any]] = {}
    for name, model in stack.models.items():
        if model.embedded:
            if running.embedded is None:
                from rollgate.collector.stack._embedded import start_embedded_model

                print("rollgate up: starting the embedded model …", file=sys.stderr, flush=True)
                running.embedded = await asyncio.to_thread(start_embedded_model, "127.0.0.1")
            em = running.embedded
            models[name] = {"base_urls": [em.base_url], "name": em.model, "api": em.api, "api_key_env": None}
        else:
            models[name] = {"base_urls": model.base_urls, "name": model.name, "api": model.api,
                            "api_key_env": model.api_key_env}

    verifiers: dict[str, str] = {}
    for name, verifier in stack.verifiers.items():
        if verifier.url is not None:
            verifiers[name] = verifier.url
            continue
        assert verifier.target is not None
        ready = await running.spawn(f"verifier {name}", launcher.verifier(verifier.target), cfg.ready_timeout_s)
        if not isinstance(ready.get("url"), str):
            raise StackError(f"verifier {name}: its ready line has no url: {ready}")
        verifiers[name] = ready["url"]

    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(_gateway_config(stack, models, verifiers), sort_keys=False))
    argv = launcher.gateway(str(config_path), cfg.host, cfg.port)
    if cfg.metrics_port is not None:
        argv += ["--metrics-port", str(cfg.metrics_port)]
    # The admin API (``rollgate gateway set``) works out of the box: a fresh token for this gateway, handed to the
    # CLI through a file only the user can read. A token the user set in the environment is used as it is.
    token = None if os.environ.get(ADMIN_TOKEN_ENV) else secrets.token_urlsafe(32)
    env = {**os.environ, ADMIN_TOKEN_ENV: token} if token else None
    ready = await running.spawn("gateway", argv, cfg.ready_timeout_s, env=env)
    address = ready.get("address")
    if not isinstance(address, str):
        raise StackError(f"gateway: its ready line has no address: {ready}")
    if token is not None:
        write_token(address, token)
        running.token_for = address
    metrics_url = ready.get("metrics_url")
    return address, metrics_url if isinstance(metrics_url, str) else None


async def _serve(cfg: UpConfig, launcher: Launcher) -> int:
    stack = load_stack(cfg)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    main = asyncio.current_task()
    assert main is not None
    starting = [True]

    def on_signal() -> None:
        stopping.set()
        if starting[0]:
            main.cancel()  # interrupt a start-up that is waiting on a ready line

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    running = _Stack()
    try:
        with tempfile.TemporaryDirectory(prefix="rollgate-up-") as tmp:
            try:
                address, metrics_url = await _start(stack, cfg, running, launcher, Path(tmp))
            except asyncio.CancelledError:
                if not stopping.is_set():
                    raise
                main.uncancel()
                return 0
            starting[0] = False
            agents = list(stack.agents)
            metrics = f"; metrics at {metrics_url}" if metrics_url else ""
            print(f"rollgate up: gateway ready at {address} (agents: {', '.join(agents)}){metrics}",
                  file=sys.stderr, flush=True)
            print(json.dumps({"event": "ready", "service": "stack", "address": address, "agents": agents,
                              "metrics_url": metrics_url}), flush=True)
            exit_wait = asyncio.create_task(running.wait_for_exit())
            stop_wait = asyncio.create_task(stopping.wait())
            await asyncio.wait({exit_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if stopping.is_set():
                exit_wait.cancel()
                print("rollgate up: stopping", file=sys.stderr, flush=True)
                return 0
            dead = exit_wait.result()
            print(f"error: rollgate up: {dead.name} exited with status {dead.proc.returncode}; stopping the rest",
                  file=sys.stderr, flush=True)
            return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await running.stop()


def up_main(argv: Sequence[str] | None = None, *, launcher: Launcher | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        for name, info in UpConfig.model_fields.items():
            print(f"  --{name.replace('_', '-')}: {info.description or ''}")
        return 0

    def run() -> int:
        cfg = parse_cli(args, UpConfig)
        try:
            return asyncio.run(_serve(cfg, launcher or Launcher()))
        except CollectorError as exc:
            print(f"error: rollgate up: {exc}", file=sys.stderr, flush=True)
            return exc.exit_status

    return run_cli(run)
