"""The documented command lines parse into the typed config; the front door dispatches; exports are real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rollgate import collector
from rollgate._cli import CliError, parse_cli
from rollgate.collector import CollectConfig, collect_main, rollgate_main, viewer_main
from rollgate.collector.run._config import COLLECT_ALIASES, COLLECT_SHORT

REQUIRED = ["+agent_name=my_agent", "+input_jsonl_fpath=in.jsonl", "+output_jsonl_fpath=out.jsonl"]


def test_documented_sft_command() -> None:
    cfg = parse_cli(REQUIRED + ["+responses_create_params.temperature=0.2", "+responses_create_params.top_p=0.95",
                                "+num_samples_in_parallel=20", "+limit=null"], CollectConfig, aliases=COLLECT_ALIASES)
    assert cfg.responses_create_params == {"temperature": 0.2, "top_p": 0.95}
    assert cfg.num_samples_in_parallel == 20 and isinstance(cfg.num_samples_in_parallel, int)
    assert cfg.limit is None and cfg.num_repeats == 1 and cfg.resume is False


def test_both_spellings_are_equal() -> None:
    plus = parse_cli(REQUIRED + ["+num_repeats=3", "+limit=5", "+responses_create_params.seed=42"], CollectConfig)
    dash = parse_cli(["--agent-name", "my_agent", "--input_jsonl_fpath", "in.jsonl", "--output-jsonl-fpath=out.jsonl",
                      "--num-repeats", "3", "--limit", "5", "--responses_create_params.seed", "42"], CollectConfig)
    assert plus == dash
    assert plus.responses_create_params["seed"] == 42


def test_resume_alias() -> None:
    assert parse_cli(REQUIRED + ["+resume_from_cache=true"], CollectConfig, aliases=COLLECT_ALIASES).resume is True


def test_gateway_default_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROLLGATE_GATEWAY", raising=False)
    assert parse_cli(REQUIRED, CollectConfig).gateway == "127.0.0.1:50051"
    monkeypatch.setenv("ROLLGATE_GATEWAY", "gw.example:9000")
    assert parse_cli(REQUIRED, CollectConfig).gateway == "gw.example:9000"


@pytest.mark.parametrize("bad", ["+num_repeats=0", "+num_samples_in_parallel=0", "+limit=0", "+deadline_s=0"])
def test_bounds(bad: str) -> None:
    with pytest.raises(CliError, match=bad[1:].split("=")[0]):
        parse_cli(REQUIRED + [bad], CollectConfig)


def test_unknown_key_lists_valid_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert collect_main(REQUIRED + ["+num_sample_in_parallel=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'num_sample_in_parallel'" in err and "num_samples_in_parallel" in err
    assert "valid keys:" in err and "agent_name" in err and not Path("out.jsonl").exists()


def test_missing_required_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert collect_main(["+agent_name=my_agent"]) == 2
    assert "input_jsonl_fpath" in capsys.readouterr().err


def test_collect_help_lists_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert collect_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "num_samples_in_parallel" in out and "(required)" in out


def test_front_door(capsys: pytest.CaptureFixture[str]) -> None:
    assert rollgate_main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("collect", "view", "up", "gateway", "verifier", "demo"):
        assert f"  {name}" in out
    assert rollgate_main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "collect, view, up" in err
    assert rollgate_main(["collect", "+agent_name=x"]) == 2  # same parser as ng_collect_rollouts
    assert "input_jsonl_fpath" in capsys.readouterr().err


def test_view_needs_an_input_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert viewer_main([]) == 2 and rollgate_main(["view"]) == 2
    assert "input_jsonl_fpath" in capsys.readouterr().err


def test_all_matches_importable() -> None:
    exported = [name for name in dir(collector) if not name.startswith("_")]
    assert set(collector.__all__) <= set(exported)
    assert {"collect_main", "viewer_main", "rollgate_main"} <= set(collector.__all__)


def test_python_dash_m_collector_is_the_front_door() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "rollgate.collector", "--help"], cwd=root, capture_output=True,
                          text=True,
                          timeout=60)
    assert proc.returncode == 0 and "commands:" in proc.stdout


def test_nemo_gyms_gym_eval_run_flags() -> None:
    """NeMo Gym's current spellings (``gym eval run``, nemo_gym/cli/main.py) mean the same keys here."""
    def parse(argv: list[str]) -> CollectConfig:
        return parse_cli(argv, CollectConfig, aliases=COLLECT_ALIASES, short=COLLECT_SHORT)

    nemo = parse(["--agent", "my_agent", "--input", "in.jsonl", "--output", "out.jsonl", "--num-repeats", "2",
                  "--concurrency", "8", "--temperature", "0.7", "--top-p", "0.95", "--max-output-tokens", "512",
                  "--resume", "--limit", "10"])
    plus = parse(REQUIRED + ["+num_repeats=2", "+num_samples_in_parallel=8", "+responses_create_params.temperature=0.7",
                             "+responses_create_params.top_p=0.95", "+responses_create_params.max_output_tokens=512",
                             "+resume_from_cache=true", "+limit=10"])
    assert nemo == plus
    assert parse(["-a", "my_agent", "-i", "in.jsonl", "-o", "out.jsonl"]) == parse(REQUIRED)
    # --resume is a switch in NeMo Gym (store_true): the next flag is not taken as its value.
    assert parse(["--resume", "-a", "my_agent", "-i", "in.jsonl", "-o", "out.jsonl"]).resume is True
