"""``ng_collect_rollouts`` / ``rollgate collect``: tasks JSONL in, rollouts JSONL out, means on stdout.

The order of a run, and why:
1. parse and validate the config (a bad key or value stops here, exit 2);
2. check the whole input file in one streaming pass (``Found N rows!``; a bad line, or no row at all, stops here,
   exit 2);
3. check that the output path can be written (exit 2), then ask the gateway for its agents (unknown agent: exit 2;
   no gateway: exit 1);
only then is anything written. A fresh run moves the previous output and its sidecars aside (one ``.bak``
folder) and writes the output directly, so it is a valid JSONL prefix at every moment; ``+resume=true`` keeps
what is there, writes a ``*.resume-….partial`` file and renames it over the output at the end (input order,
every rollout once). Then the manifest is written and the means JSON goes to stdout. Exit 1 if more than
``max_failure_fraction`` failed.

Every result is also appended to the run's completion journal (``<output>.journal``, see ``_journal``) before it
counts as done, since the output can only take it once every rollout before it has finished. A run that
completes removes the journal; after Ctrl-C, SIGKILL or an OOM kill it holds every finished rollout the output
does not, and ``+resume=true`` takes them from there instead of running them again.

Ctrl-C: the first one stops sending, writes the complete groups and the manifest, prints a partial summary and
the command to resume (exit 130); a second one exits at once — it is handled on the event loop, between writes,
so no line is torn.

A rollout that has held the head of the output for ``HELD_REPORT_S`` (30 s; env ``ROLLGATE_HELD_REPORT_S``) is
named on stderr — id, task, repeat, where it is, how long — at most once per that interval.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from rollgate._cli import parse_cli, run_cli, spellings
from rollgate.collector._json import dumps
from rollgate.collector._outputs import back_up, failures_path, manifest_path, utc_stamp
from rollgate.collector.errors import CollectorError, InputError, OutputError, UnknownAgentError, UsageError
from rollgate.collector.run._channels import TlsFiles
from rollgate.collector.run._config import COLLECT_ALIASES, COLLECT_SHORT, CollectConfig
from rollgate.collector.run._gateway_client import GatewayClient
from rollgate.collector.run._journal import Journal, journal_path, journal_paths
from rollgate.collector.run._manifest import RunRecord, endpoints_of, write_manifest
from rollgate.collector.run._resume import ExistingRows, partial_paths, resume_sources, warn_about
from rollgate.collector.run._rows import MeansAccumulator, added_fields, build_row, stamp_bookkeeping
from rollgate.collector.run._tasks import RolloutSpec, check_input, iter_specs, shard_task_count
from rollgate.collector.run._writer import GroupWriter
from rollgate.protos.rollgate.v1 import gateway_pb2 as pb

__all__ = ["HELD_REPORT_S", "collect", "collect_main", "held_report_s", "reorder_window"]

# Failed rollouts are listed one line each up to this many, then only counted (a dead backend fails thousands).
_MAX_FAILURE_LINES = 10
# Say which rollout holds the output once it has done so this long, and again at most this often.
HELD_REPORT_S = 30.0
HELD_REPORT_ENV = "ROLLGATE_HELD_REPORT_S"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def held_report_s() -> float:
    """``HELD_REPORT_S``, or the seconds in env ``ROLLGATE_HELD_REPORT_S`` (tests lower it)."""
    raw = os.environ.get(HELD_REPORT_ENV)
    try:
        value = float(raw) if raw else HELD_REPORT_S
    except ValueError:
        return HELD_REPORT_S
    return value if value > 0 else HELD_REPORT_S


def reorder_window(num_samples_in_parallel: int, num_repeats: int) -> int:
    """How far (in rollouts) sending may run ahead of the oldest unwritten rollout.

    At least two groups so the head group can always be sent whole; many times the parallelism so one slow
    rollout (a long-tailed model: p99 ten times the median) does not idle the other slots while the rows behind
    it wait. Memory stays bounded by the writer's byte cap as well as by this count.
    """
    return max(64 * num_samples_in_parallel, 2 * num_repeats, 1024)


def _usage() -> str:
    lines = ["usage: ng_collect_rollouts +key=value ... (or --key value, or NeMo Gym's gym eval run flags:",
             "       ng_collect_rollouts --agent my_agent --input in.jsonl --output out.jsonl --num-repeats 2)",
             "", "keys:"]
    for name, info in CollectConfig.model_fields.items():
        required = " (required)" if info.is_required() else ""
        also = spellings(name, COLLECT_ALIASES, COLLECT_SHORT)
        flags = f" [also {', '.join(also)}]" if also else ""
        lines.append(f"  {name}{required}{flags}: {info.description or ''}")
    return "\n".join(lines)


def collect_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``ng_collect_rollouts``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(_usage())
        return 0
    status = run_cli(lambda: _run(args))
    if argv is None:  # the console script, not a caller in this process
        exit_now(status)
    return status


def exit_now(status: int) -> None:
    """End the process without the interpreter's teardown, once every file is closed and the run is over.

    Tearing down the modules a run loads (pydantic, protobuf, gRPC) takes 50–100 ms, a third of the command's
    fixed cost, and does nothing for the user: the output, sidecar and manifest are closed by now. Only the
    standard streams and logging handlers still hold buffered bytes; they are flushed first.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``| head``): nothing more can be said on it
            pass
    os._exit(status)


def resume_command(args: Sequence[str]) -> str:
    """The exact command that resumes this run: the same arguments with ``+resume=true``."""
    kept = [a for a in args if not a.lstrip("+-").replace("-", "_").startswith(("resume=", "resume_from_cache="))
            and a not in ("--resume", "--resume_from_cache", "--resume-from-cache")]
    return shlex.join(["ng_collect_rollouts", *kept, "+resume=true"])


def _new_loop() -> asyncio.AbstractEventLoop:
    # uvloop makes each loop iteration and socket callback cheaper; the collector is one loop doing little else.
    try:
        import uvloop
    except ImportError:  # optional: asyncio's own loop behaves the same, a little slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run(args: list[str]) -> int:
    cfg = parse_cli(args, CollectConfig, aliases=COLLECT_ALIASES, short=COLLECT_SHORT)
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            return runner.run(collect(cfg, command=resume_command(args)))
    except CollectorError as exc:
        _log(f"error: {exc}")
        return exc.exit_status
    except KeyboardInterrupt:  # only reached when Ctrl-C lands before the loop's own handler is installed
        _log("interrupted before any rollout ran; nothing was written")
        return 130


def _check_output(cfg: CollectConfig, output: Path) -> None:
    """Fail now, with one line, if the output cannot be written — before the old one is moved or anything sent."""
    if output.resolve() == Path(cfg.input_jsonl_fpath).resolve():
        raise UsageError("output_jsonl_fpath is the input file; choose another output path")
    if output.is_dir():
        raise OutputError(str(output), "it is a directory")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise OutputError(str(output), exc.strerror or str(exc)) from None


async def collect(cfg: CollectConfig, *, command: str | None = None) -> int:
    """Run one collection; raises ``CollectorError`` for anything that stops it before rollouts run."""
    output = Path(cfg.output_jsonl_fpath)
    summary = check_input(cfg.input_jsonl_fpath)
    _log(f"Found {summary.rows} rows!")
    if not summary.rows:  # before anything is moved aside: a wrong path must not cost the last output
        raise InputError(cfg.input_jsonl_fpath, None, "no rows")
    tasks = summary.rows if cfg.limit is None else min(cfg.limit, summary.rows)
    if cfg.num_shards > 1:
        tasks = shard_task_count(tasks, cfg.num_shards, cfg.shard_index)
        _log(f"Shard {cfg.shard_index} of {cfg.num_shards}: {tasks} tasks")
    rollouts = tasks * cfg.num_repeats
    if cfg.num_repeats > 1:
        _log(f"Repeating rows (in a pattern of abc to aabbcc) from {tasks} to {rollouts}!")
    _check_output(cfg, output)

    tls = TlsFiles(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
    async with GatewayClient(cfg.gateway, tls=tls, reconnect_timeout_s=cfg.reconnect_timeout_s) as client:
        agents = await client.list_agents()
        names = [a.name for a in agents]
        if cfg.agent_name not in names:
            raise UnknownAgentError(cfg.agent_name, cfg.gateway, names)
        info = next(a for a in agents if a.name == cfg.agent_name)

        existing: ExistingRows | None = None
        if cfg.resume:
            sources = resume_sources(output)
            if sources:
                existing = ExistingRows(sources)
            else:
                _log(f"warning: +resume=true but {output} does not exist yet; starting from the beginning")
        else:
            back_up([output, failures_path(output), manifest_path(output), *partial_paths(output),
                     *journal_paths(output)], utc_stamp(), keep=cfg.keep_backups)

        record = RunRecord(
            config=cfg,
            input_sha256=summary.sha256,
            input_rows=summary.rows,
            tasks=tasks,
            rollouts=rollouts,
            started_at=dt.datetime.now(dt.UTC),
            endpoints=endpoints_of(cfg.gateway, info),
        )
        _log(f"Querying with {cfg.num_samples_in_parallel} concurrent requests")
        await _run_rollouts(cfg, client, record, output, existing)

    return _finish(cfg, record, output, command)


def _finish(cfg: CollectConfig, record: RunRecord, output: Path, command: str | None) -> int:
    print(json.dumps(record.means, indent=4), flush=True)
    by_version = record.reward_by_version()
    if len(by_version) > 1:
        # One mean over several verify() versions compares nothing: say so, and give each version's own.
        each = "; ".join(f"{v}: {s['mean_reward']:.4g} over {s['rollouts']}" for v, s in by_version.items())
        _log(f"warning: {len(by_version)} verifier versions scored this run (hot-swapped or resumed across a "
             f"change); the reward mean above mixes them. Per version: {each}")
    stages = ", ".join(f"{stage}: {n}" for stage, n in sorted(record.failures_by_stage.items()))
    if record.interrupted:
        _log(f"interrupted: {record.written} of {record.rollouts} rollouts written "
             f"({record.succeeded} succeeded, {record.failed} failed{' — ' + stages if stages else ''}); "
             f"the manifest is {manifest_path(output)}")
        if record.unwritten:
            _log(f"{record.unwritten} more finished rollout(s) waited behind unfinished ones: they are kept in "
                 f"{record.journal} and the resume does not run them again")
        if command:
            _log(f"resume with: {command}")
        return 130
    if record.failed:
        fraction = record.failed / max(record.rollouts, 1)
        _log(f"{record.failed} of {record.rollouts} rollouts failed ({stages}); "
             f"their task groups are in {failures_path(output)}")
        if command:
            _log(f"re-run the failed ones with: {command}")
        if fraction > cfg.max_failure_fraction:
            return 1
        _log(f"within +max_failure_fraction={cfg.max_failure_fraction:g}: exit 0")
    return 0


def _install_interrupt(task: asyncio.Task[None], record: RunRecord, writer: GroupWriter, journal: Journal) -> None:
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if record.interrupted:
            # Second Ctrl-C: leave now. This runs on the loop, between callbacks, never inside a write; the
            # journal's and the writer's buffers are pushed out first (their flushes wait for the loop iteration).
            journal.flush()
            writer.flush()
            _log(f"interrupted again: exiting at once (complete groups are on disk, every finished rollout in "
                 f"{journal.path})")
            os._exit(130)
        record.interrupted = True
        _log(f"\ninterrupted: writing the complete groups; every finished rollout is in {journal.path} for the "
             "resume (Ctrl-C again to exit at once)")
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests) or no signals here
        pass


def _remove_interrupt() -> None:
    try:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
    except (NotImplementedError, RuntimeError, ValueError):
        pass


def _open_files(cfg: CollectConfig, output: Path, resuming: bool, stamp: str) -> tuple[GroupWriter, Journal]:
    """The ordered writer and the completion journal: a resume writes both under names of its own."""
    window = reorder_window(cfg.num_samples_in_parallel, cfg.num_repeats)
    resume = f".resume-{stamp}-{os.getpid()}" if resuming else None
    try:
        if resume is not None:
            suffix = f"{resume}.partial"
            writer = GroupWriter(Path(f"{output}{suffix}"), cfg.num_repeats, window,
                                 failures=Path(f"{failures_path(output)}{suffix}"))
        else:
            writer = GroupWriter(output, cfg.num_repeats, window)
        return writer, Journal(journal_path(output, resume), watermark=lambda: writer.flushed)
    except OSError as exc:
        raise OutputError(str(output), exc.strerror or str(exc)) from None


async def _report_held(writer: GroupWriter, running: dict[int, RolloutSpec], client: GatewayClient,
                       journal: Journal, bar: tqdm[None], every_s: float) -> None:
    """Name the rollout that holds the head of the output once it has done so ``every_s``, at most that often."""
    head: int | None = None
    since = last = time.monotonic()
    while True:
        await asyncio.sleep(min(1.0, every_s / 4))
        now = time.monotonic()
        missing = writer.head_missing()
        if missing != head:
            head, since = missing, now
        spec = running.get(head) if head is not None else None
        if spec is None or now - since < every_s or now - last < every_s:
            continue
        last = now
        where, age = client.where(spec.rollout_id) or ("finishing", now - since)
        bar.write(f"waiting for rollout {spec.rollout_id} (task {spec.task_index}, repeat {spec.repeat_index}): "
                  f"{where} for {age:.0f} s; it has held the output at {writer.written} rollout(s) for "
                  f"{now - since:.0f} s, with {writer.buffered} finished one(s) waiting behind it (in "
                  f"{journal.path})", file=sys.stderr)


def _commit_resume(writer: GroupWriter, output: Path, sources: list[Path]) -> None:
    """Put the resumed files in place: new output and sidecar by rename, every older source removed."""
    os.replace(writer.output, output)
    side = failures_path(output)
    if writer.has_failures:
        os.replace(writer.failures, side)
    for path in sources:
        if path not in (output, side) or (path == side and not writer.has_failures):
            path.unlink(missing_ok=True)


def _with_prior_responses(specs: Iterator[RolloutSpec], existing: ExistingRows) -> Iterator[RolloutSpec]:
    """The specs, each rollout that failed at verify carrying its stored response (re-verified, not regenerated)."""
    for spec in specs:
        prior = existing.prior_response(spec)
        yield dataclasses.replace(spec, prior_response_json=prior) if prior else spec


async def _run_rollouts(cfg: CollectConfig, client: GatewayClient, record: RunRecord, output: Path,
                        existing: ExistingRows | None) -> None:
    writer, journal = _open_files(cfg, output, existing is not None, utc_stamp())
    means = MeansAccumulator()
    bar = tqdm(total=record.rollouts, desc="Collecting rollouts", file=sys.stderr, dynamic_ncols=True)
    started = time.monotonic()
    running: dict[int, RolloutSpec] = {}  # seq -> spec, sent and not answered yet (to name what holds the head)

    def on_result(spec: RolloutSpec, result: pb.RolloutResult) -> None:
        running.pop(spec.seq, None)
        built = build_row(spec, result, cfg.agent_name)
        line = dumps(built.row)
        journal.append(spec, built.ok, line)  # on disk by the end of this loop iteration, before the writer's
        if built.ok:
            record.succeeded += 1
            means.add(built.added)
            record.scored(built.row["_rollout"]["verifier_version"], built.row.get("reward"))
        else:
            record.failed += 1
            stage = built.stage or "rollout"
            record.failures_by_stage[stage] += 1
            if record.failed <= _MAX_FAILURE_LINES:
                err = built.row["error"]
                bar.write(f"rollout {spec.rollout_id} (task {spec.task_index}, repeat {spec.repeat_index}) failed: "
                          f"{err['stage']}/{err['kind']}: {err['message']}", file=sys.stderr)
        writer.add(spec.seq, built.row, built.ok,
                   len(result.response_json) + len(result.output_json) + len(result.verifier_fields_json), line=line)
        bar.update(1)

    async def admit(spec: RolloutSpec) -> bool:
        await writer.wait_for_room(spec.seq)
        row = existing.take(spec) if existing is not None else None
        if row is None:
            running[spec.seq] = spec
            return True
        # Reused: it counts towards the means like a fresh one (its added fields are those the task lacks).
        record.succeeded += 1
        record.reused += 1
        # A row written before the NeMo Gym keys existed gets them now, like every row of this run.
        means.add(added_fields(stamp_bookkeeping(row, spec, cfg.agent_name), spec.row))
        record.scored(row["_rollout"].get("verifier_version"), row.get("reward"))
        writer.add(spec.seq, row, True)
        bar.update(1)
        return False

    specs = iter_specs(
        cfg.input_jsonl_fpath,
        agent=cfg.agent_name,
        overrides=cfg.responses_create_params,
        num_repeats=cfg.num_repeats,
        limit=cfg.limit,
        num_shards=cfg.num_shards,
        shard_index=cfg.shard_index,
    )
    if existing is not None:
        specs = _with_prior_responses(specs, existing)
    task = asyncio.create_task(client.collect(
        specs,
        agent=cfg.agent_name,
        deadline_s=cfg.deadline_s,
        max_in_flight=cfg.num_samples_in_parallel,
        on_result=on_result,
        admit=admit,
        training=cfg.training,
    ))
    _install_interrupt(task, record, writer, journal)
    held = asyncio.create_task(_report_held(writer, running, client, journal, bar, held_report_s()))
    try:
        await task
    except asyncio.CancelledError:
        if not record.interrupted:
            raise
    finally:
        held.cancel()
        _remove_interrupt()
        bar.close()
        complete = not record.interrupted and task.done() and not task.cancelled() and task.exception() is None
        record.unwritten = writer.buffered
        writer.close(sync=existing is not None and complete)
        journal.close()
        if existing is not None:
            warn_about(existing)
            if complete:
                _commit_resume(writer, output, existing.sources)
            elif record.interrupted:
                _log(f"the resumed rows so far are in {writer.output}; the next +resume=true picks them up")
        if complete:
            journal.remove()  # every row is in the output or its sidecar now
        else:
            record.journal = str(journal.path)
        record.written = writer.written
        record.reconnects = client.reconnects
        record.duplicates_dropped = client.duplicates_dropped
        record.wall_s = time.monotonic() - started
        record.finished_at = dt.datetime.now(dt.UTC)
        record.means = means.means()
        write_manifest(manifest_path(output), record)
