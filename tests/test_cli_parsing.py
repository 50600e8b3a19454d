"""Both spellings of arguments, typing, null, and unknown keys."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import BaseModel, Field

from rollgate._cli import CliError, parse_cli


class _Cfg(BaseModel):
    agent_name: str
    limit: int | None = None
    num_repeats: int = Field(1, ge=1)
    resume: bool = False
    responses_create_params: dict[str, Any] = {}
    tags: list[str] = []


def test_plus_style_and_nested_params() -> None:
    cfg = parse_cli(
        ["+agent_name=my_agent", "+limit=null", "+responses_create_params.temperature=0.2",
         "+responses_create_params.seed=42", "+num_repeats=3"],
        _Cfg,
    )
    assert cfg.agent_name == "my_agent"
    assert cfg.limit is None
    assert cfg.num_repeats == 3
    assert cfg.responses_create_params == {"temperature": 0.2, "seed": 42}
    assert isinstance(cfg.responses_create_params["seed"], int)


def test_dash_style_is_equivalent() -> None:
    a = parse_cli(["--agent-name", "x", "--limit", "5", "--resume", "--responses_create_params.top_p=0.9"], _Cfg)
    b = parse_cli(["+agent_name=x", "+limit=5", "+resume=true", "+responses_create_params.top_p=0.9"], _Cfg)
    assert a == b
    assert a.limit == 5 and a.resume is True


def test_lists() -> None:
    assert parse_cli(["+agent_name=a", "+tags=[x,y]"], _Cfg).tags == ["x", "y"]


def test_unknown_key_lists_valid_keys_and_near_match() -> None:
    with pytest.raises(CliError) as info:
        parse_cli(["+agent_name=a", "+num_repeat=3"], _Cfg)
    msg = str(info.value)
    assert "num_repeat" in msg and "did you mean 'num_repeats'" in msg
    assert "limit" in msg and "responses_create_params" in msg


def test_bad_type_and_bound_name_the_key() -> None:
    with pytest.raises(CliError, match="limit"):
        parse_cli(["+agent_name=a", "+limit=many"], _Cfg)
    with pytest.raises(CliError, match="num_repeats"):
        parse_cli(["+agent_name=a", "+num_repeats=0"], _Cfg)


def test_missing_required_key() -> None:
    with pytest.raises(CliError, match="agent_name"):
        parse_cli([], _Cfg)


def test_positional() -> None:
    cfg = parse_cli(["my_agent", "+limit=1"], _Cfg, positional=["agent_name"])
    assert cfg.agent_name == "my_agent"
    with pytest.raises(CliError, match="unexpected"):
        parse_cli(["a", "b"], _Cfg, positional=["agent_name"])


def test_help_lists_keys_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    from rollgate._cli import run_cli

    assert run_cli(lambda: int(bool(parse_cli(["--help"], _Cfg)))) == 0
    out = capsys.readouterr().out
    assert "agent_name" in out and "required" in out and "num_repeats" in out and "default 1" in out


def _omegaconf_value(raw: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]), resolve=False)["v"]  # type: ignore[call-overload,index]
    except Exception as exc:  # noqa: BLE001 (any grammar error)
        return exc


def test_fast_values_equal_omegaconf_on_a_generated_corpus() -> None:
    """The start-up fast path must type every value it takes exactly as OmegaConf does (YAML 1.1 octal, bool words)."""
    from rollgate._cli import _UNHANDLED, _fast_value

    rng = random.Random(8)
    alphabet = "0123456789-.:/_aeEnNoOfFtTyYsSlLuUx~+ "
    corpus = ["20", "0.2", "-3", "010", "0755", "08", "1:30", "007", "true", "True", "TRUE", "tRue", "yes", "Off",
              "y", "n", "null", "NULL", "nUll", "~", "my_agent", "/tmp/a.jsonl", "./a", "../a", "127.0.0.1:50051",
              "dns:///gw:50051", "1e5", "1.", ".5", "0.50", "-0.0", "e5", "inf", ".inf", "x", "/", "./"]
    corpus += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(3000)]
    octets = [0, 1, 9, 10, 59, 60, 127, 255]
    ports = ["", ":0", ":5", ":59", ":60", ":50051"]
    corpus += [".".join(str(rng.choice(octets)) for _ in range(4)) + rng.choice(ports) for _ in range(300)]
    taken = 0
    for raw in corpus:
        fast = _fast_value(raw)
        if fast is _UNHANDLED:
            continue
        taken += 1
        slow = _omegaconf_value(raw)
        assert (type(fast), fast) == (type(slow), slow), raw
    assert taken > 300  # the corpus exercises the fast path, not only the fallback


_ALIASES = {"agent": "agent_name", "again": "resume", "temperature": "responses_create_params.temperature"}
_SHORT = {"a": "agent_name", "r": "resume"}


def test_aliases_and_one_letter_flags_set_the_same_keys() -> None:
    plus = parse_cli(["+agent_name=x", "+resume=true", "+responses_create_params.temperature=0.5", "+limit=2"], _Cfg)
    for argv in (["--agent", "x", "--again", "--temperature", "0.5", "--limit", "2"],
                 ["-a", "x", "-r", "--temperature=0.5", "+limit=2"],
                 ["-a=x", "--again=true", "+temperature=0.5", "--limit=2"]):
        assert parse_cli(argv, _Cfg, aliases=_ALIASES, short=_SHORT) == plus, argv


def test_an_alias_of_a_switch_takes_no_value() -> None:
    # --again is a bool key under another name: the next argument is not swallowed as its value.
    cfg = parse_cli(["--again", "--agent", "x"], _Cfg, aliases=_ALIASES)
    assert cfg.resume is True and cfg.agent_name == "x"


def test_unknown_flags_name_the_valid_keys_and_the_other_spellings() -> None:
    with pytest.raises(CliError) as info:
        parse_cli(["-z", "1", "+agent_name=x"], _Cfg, aliases=_ALIASES, short=_SHORT)
    msg = str(info.value)
    assert msg.startswith("unknown flag '-z'") and "agent_name" in msg and "--agent/-a" in msg
    with pytest.raises(CliError, match=r"unknown key 'tempreature' \(did you mean 'temperature'\?\)"):
        parse_cli(["--tempreature", "1"], _Cfg, aliases=_ALIASES, short=_SHORT)
    with pytest.raises(CliError, match="-a needs a value"):
        parse_cli(["-a"], _Cfg, short=_SHORT)
    assert parse_cli(["-a", "x", "--limit", "-3"], _Cfg, short=_SHORT).limit == -3  # a value, not a flag


def test_help_shows_the_other_spellings_beside_their_keys() -> None:
    from rollgate._cli import CliHelp

    with pytest.raises(CliHelp) as shown:
        parse_cli(["--help"], _Cfg, aliases=_ALIASES, short=_SHORT)
    lines = str(shown.value).splitlines()
    assert any(line.startswith("  agent_name") and "(also --agent/-a)" in line for line in lines)
    assert any(line.startswith("  responses_create_params") and "--temperature" in line for line in lines)
    assert any(line.startswith("  resume") and "--again/-r" in line for line in lines)
