"""Rollouts through the core against the real fake model and resources servers on loopback."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from rollgate.gateway import GatewayCore, RolloutRequest
from tests.fakes import FakeModelServer, FakeResourcesServer
from tests.gateway.gw_helpers import make_config, task


async def _run(config: Any, t: dict[str, Any], params: dict[str, Any] | None = None,
               deadline_s: float = 0.0, agent: str = "a") -> Any:
    async with GatewayCore(config) as core:
        return await core.run_rollout(RolloutRequest.from_dicts("r1", agent, t, params, deadline_s=deadline_s))


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
async def test_single_turn_reward_and_version(api: str, fake_model: FakeModelServer,
                                              fake_resources: FakeResourcesServer) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url, api=api, kind="single_turn",
                      default_params={"temperature": 0.5, "top_p": 0.9})
    out = await _run(cfg, task("say: Paris", "paris", category="geo"), {"input": "say: Paris", "temperature": 0.1})
    assert out.error is None, out.error
    assert out.reward == 1.0
    assert out.verifier_fields == {"reward": 1.0, "accuracy": True}
    assert out.verifier_version == "fake-1"
    assert out.attempts == 1 and not out.truncated
    # request params beat agent defaults; the agent's model name is what is sent
    assert out.params == {"temperature": 0.1, "top_p": 0.9, "input": "say: Paris", "model": "fake-model"}
    path = "/v1/responses" if api == "responses" else "/v1/chat/completions"
    assert fake_model.requests[path] == 1
    assert fake_model.bodies[-1]["temperature"] == 0.1
    resp = out.response
    assert resp["object"] == "response" and resp["model"] == "fake-model"
    assert resp["output"] == out.output and out.output[-1]["type"] == "message"
    assert resp["usage"]["output_tokens"] == 1
    # the verifier got the task fields, the params as sent and the response
    _, body = fake_resources.verified[-1]
    assert body["category"] == "geo" and body["responses_create_params"] == out.params
    assert body["response"]["id"] == resp["id"]
    assert fake_resources.requests["seed_session"] == 1 and fake_resources.requests["close_session"] == 1


async def test_chat_backend_reasoning_and_model_name_from_backend(fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(supports_responses=False, reported_model="served/v2") as fake:
        cfg = make_config(fake.base_url, fake_resources.url, kind="single_turn")
        out = await _run(cfg, task("reason: hmm\nsay: 42", "42"))
    assert out.reward == 1.0
    assert [i["type"] for i in out.output] == ["reasoning", "message"]
    assert out.model == "served/v2" and out.response["model"] == "served/v2"


async def test_responses_api_on_backend_without_it_is_a_final_model_error(
        fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(supports_responses=False) as fake:
        out = await _run(make_config(fake.base_url, fake_resources.url, api="responses"), task("say: x"))
    assert out.error is not None
    error = out.error
    assert (error.stage, error.kind, error.http_status, error.attempts) == ("model", "http_error", 404, 1)


async def test_unknown_param_dropped_with_one_warning_per_agent(
        fake_model: FakeModelServer, fake_resources: FakeResourcesServer, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url, kind="single_turn")
    caplog.set_level(logging.WARNING, logger="rollgate.gateway.model")
    async with GatewayCore(cfg) as core:
        for i in range(4):
            out = await core.run_rollout(RolloutRequest.from_dicts(
                f"r{i}", "a", task("say: ok", "ok"), {"input": "say: ok", "weird_knob": 1, "seed": 3}))
            assert out.reward == 1.0
    warnings = [r for r in caplog.records if "weird_knob" in r.getMessage()]
    assert len(warnings) == 1
    assert "weird_knob" not in fake_model.bodies[-1] and fake_model.bodies[-1]["seed"] == 3


async def test_model_400_is_final(fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url)
    out = await _run(cfg, task("fail_seed: 5\nsay: x"), {"input": "fail_seed: 5\nsay: x", "seed": 5})
    assert out.error is not None and out.reward is None
    error = out.error
    assert (error.stage, error.kind, error.http_status, error.attempts) == ("model", "http_error", 400, 1)
    assert "seed rejected" in out.error.message
    assert fake_model.requests["/v1/chat/completions"] == 1
    assert fake_resources.requests["verify"] == 0
    # another seed for the same task works: the failure is deterministic per seed
    ok = await _run(cfg, task("fail_seed: 5\nsay: x", "x"), {"input": "fail_seed: 5\nsay: x", "seed": 6})
    assert ok.reward == 1.0


async def test_model_500_retried_then_failed(fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(fail_status=500) as fake:
        out = await _run(make_config(fake.base_url, fake_resources.url), task("say: x"))
        assert fake.requests["/v1/chat/completions"] == 3
    assert out.error is not None
    error = out.error
    assert (error.stage, error.kind, error.http_status, error.attempts) == ("model", "http_error", 500, 3)
    assert out.attempts == 3


async def test_model_503_then_success_counts_attempts(fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer(fail_status=503, fail_rate=0.5, seed=1) as fake:
        cfg = make_config(fake.base_url, fake_resources.url, kind="single_turn",
                          retries={"attempts": 20, "initial_wait_s": 0.001, "max_wait_s": 0.002, "jitter_s": 0})
        out = await _run(cfg, task("say: y", "y"))
        assert out.reward == 1.0
        assert out.attempts == fake.requests["/v1/chat/completions"]


async def test_connection_refused_is_stage_model_kind_connection(fake_resources: FakeResourcesServer) -> None:
    async with FakeModelServer() as fake:
        url = fake.base_url
    # A connection failure is an outage: retried until the time budget is spent, not for `attempts` (3) only.
    out = await _run(make_config(url, fake_resources.url, retries={"budget_s": 0.3}), task("say: x"))
    assert out.error is not None
    assert (out.error.stage, out.error.kind) == ("model", "connection")
    assert out.error.attempts >= 4 and "retries.budget_s=0.3" in out.error.message


@pytest.mark.parametrize("reward", ["high", True, None, float("inf")])
async def test_non_numeric_reward_is_a_verify_failure(fake_model: FakeModelServer, reward: Any) -> None:
    async with FakeResourcesServer(reward=reward if reward != float("inf") else 1e400) as rs:
        out = await _run(make_config(fake_model.base_url, rs.url), task("say: x", "x"))
    assert out.error is not None and out.reward is None
    assert (out.error.stage, out.error.kind) == ("verify", "invalid_response")


async def test_non_json_verify_answer_is_a_verify_failure(fake_model: FakeModelServer) -> None:
    async with FakeResourcesServer(verify_raw=b"<html>oops</html>") as rs:
        out = await _run(make_config(fake_model.base_url, rs.url), task("say: x", "x"))
    assert out.error is not None and (out.error.stage, out.error.kind) == ("verify", "invalid_response")


async def test_verify_422_is_http_error_and_close_404_is_fine(fake_model: FakeModelServer) -> None:
    async with FakeResourcesServer(verify_status=422) as rs:
        out = await _run(make_config(fake_model.base_url, rs.url), task("say: x", "x"))
    assert out.error is not None
    assert (out.error.stage, out.error.kind, out.error.http_status) == ("verify", "http_error", 422)
    async with FakeResourcesServer(has_close_session=False, version=None) as rs:
        out = await _run(make_config(fake_model.base_url, rs.url), task("say: x", "x"))
        assert rs.requests["close_session"] == 1
    assert out.reward == 1.0 and out.verifier_version == "unknown"


async def test_unknown_agent(fake_model: FakeModelServer, fake_resources: FakeResourcesServer) -> None:
    out = await _run(make_config(fake_model.base_url, fake_resources.url), task("say: x"), agent="nope")
    assert out.error is not None and (out.error.stage, out.error.kind) == ("gateway", "unknown_agent")
    assert out.error.message.endswith("serves: a")


async def test_deadline_is_stage_rollout_kind_timeout(fake_model: FakeModelServer,
                                                       fake_resources: FakeResourcesServer) -> None:
    out = await _run(make_config(fake_model.base_url, fake_resources.url), task("sleep: 5\nsay: x"), deadline_s=0.2)
    assert out.error is not None and (out.error.stage, out.error.kind) == ("rollout", "timeout")
    assert out.reward is None and out.timings.total_s < 5


@pytest.mark.parametrize("task_json, params_json", [
    (b"{not json", b""), (b"[1, 2]", b""), (b"{}", b"{oops"), (b"{}", b'{"input": 5}'),
])
async def test_bad_task_or_params_is_stage_input(fake_model: FakeModelServer, fake_resources: FakeResourcesServer,
                                                 task_json: bytes, params_json: bytes) -> None:
    async with GatewayCore(make_config(fake_model.base_url, fake_resources.url)) as core:
        out = await core.run_rollout(RolloutRequest("r", "a", task_json, params_json))
    assert out.error is not None and (out.error.stage, out.error.kind) == ("input", "invalid_request")
    assert fake_model.requests.total() == 0


async def test_api_key_sent_as_bearer(fake_model: FakeModelServer, fake_resources: FakeResourcesServer,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLGATE_TEST_KEY", "sekrit")
    cfg = make_config(fake_model.base_url, fake_resources.url, kind="single_turn")
    cfg.agents["a"].model.api_key_env = "ROLLGATE_TEST_KEY"
    out = await _run(cfg, task("say: x", "x"))
    assert out.reward == 1.0
    assert fake_model.headers[-1]["Authorization"] == "Bearer sekrit"
    assert orjson.dumps(out.params).find(b"sekrit") == -1


async def test_fake_choose_is_reproducible_per_seed(fake_model: FakeModelServer,
                                                    fake_resources: FakeResourcesServer) -> None:
    cfg = make_config(fake_model.base_url, fake_resources.url, kind="single_turn")
    texts = []
    async with GatewayCore(cfg) as core:
        for seed in [1, 2, 3, 4, 5, 6, 1]:
            out = await core.run_rollout(RolloutRequest.from_dicts(
                "r", "a", task("choose: A|W", "A"), {"input": "choose: A|W", "seed": seed}))
            texts.append(out.output[-1]["content"][0]["text"])
    assert set(texts) == {"A", "W"} and texts[0] == texts[-1]


async def test_verifier_token_from_config_env_reaches_the_resources_server(
        fake_model: FakeModelServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_VERIFIER_TOKEN", "vtok")
    async with FakeResourcesServer(token="vtok") as rs:
        cfg = make_config(fake_model.base_url, rs.url, kind="single_turn", verifier_token_env="TEST_VERIFIER_TOKEN")
        out = await _run(cfg, task("say: a", "a"))
        assert out.error is None and out.reward == 1.0 and rs.unauthorised == 0
        monkeypatch.setenv("TEST_VERIFIER_TOKEN", "wrong")
        out = await _run(cfg, task("say: a", "a"))
    assert out.error is not None and (out.error.stage, out.error.http_status) == ("verify", 401)
