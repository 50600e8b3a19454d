"""Done-when 2: what the rendered manifests promise — GPUs, shards, hot-swap, NetworkPolicy, non-root, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rollgate.gateway import load_config
from tests.helm.chart import (
    Manifest,
    arg_after,
    ci_values,
    containers,
    find,
    name,
    one,
    plus_args,
    pod_specs,
    render,
    render_error,
)

GPU = "nvidia.com/gpu"


def _gpu_limits(docs: list[Manifest], resource: str = GPU) -> dict[str, Any]:
    """container path -> its GPU limit, for every container that has one."""
    out = {}
    for where, spec in pod_specs(docs):
        for c in containers(spec):
            limits = c.get("resources", {}).get("limits", {})
            if resource in limits:
                out[f"{where}/{c['name']}"] = limits[resource]
    return out


# --- GPUs ------------------------------------------------------------------------------------------------------


def test_gpu_limits_exactly_on_the_vllm_servers(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        limits = _gpu_limits(docs)
        vllm = [d for d in find(docs, "Deployment")
                if d["metadata"]["labels"].get("app.kubernetes.io/component") == "model"]
        if scenario == "gpu-vllm":
            # Two GPUs per replica, as the values ask, and tensor parallelism to match.
            assert limits == {f"Deployment/{name('model-default')}/vllm": 2}
            command = vllm[0]["spec"]["template"]["spec"]["containers"][0]["command"]
            assert arg_after(command, "--tensor-parallel-size") == "2"
        else:
            assert limits == {}, scenario
            assert vllm == [], scenario


def test_gpu_scheduling_settings_reach_the_vllm_pod(rendered: dict[str, list[Manifest]]) -> None:
    spec = one(rendered["gpu-vllm"], "Deployment", name("model-default"))["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == GPU
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == name("model-default-cache")
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert "/dev/shm" in mounts
    # Weights take minutes to load: liveness must not kill the pod first.
    startup = spec["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_gpu_resource_name_is_overridable() -> None:
    docs = render([ci_values("gpu-vllm")], sets=["vllmDefaults.gpu.resourceName=amd.com/gpu"])
    assert _gpu_limits(docs, GPU) == {}
    assert list(_gpu_limits(docs, "amd.com/gpu").values()) == [2]


def test_vllm_without_a_gpu_count_fails_with_a_clear_message() -> None:
    err = render_error([ci_values("cpu")], sets=["models.default.vllm.enabled=true"])
    assert "models.default.vllm.gpu.count is required" in err


def test_external_models_point_the_agents_at_their_urls(rendered: dict[str, list[Manifest]]) -> None:
    cm = one(rendered["external-openai"], "ConfigMap", name("agents"))
    agents = yaml.safe_load(cm["data"]["agents.yaml"])["agents"]
    assert agents["my_agent"]["model"]["base_urls"] == ["https://api.openai.com/v1"]
    assert agents["my_agent"]["model"]["api"] == "responses"
    # Keys are never in the config, only the name of the env var the gateway reads them from...
    assert agents["my_agent"]["model"]["api_key_env"] == "ROLLGATE_MODEL_KEY_DEFAULT"
    assert agents["judge_agent"]["model"]["api_key_env"] == "ROLLGATE_MODEL_KEY_JUDGE"
    assert "sk-ci-not-a-real-key" not in cm["data"]["agents.yaml"]
    # ...and the gateway pod has both variables: one from the named Secret, one from the chart's Secret.
    pod = one(rendered["external-openai"], "Deployment", name("gateway"))["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["ROLLGATE_MODEL_KEY_DEFAULT"]["valueFrom"]["secretKeyRef"] == {"name": "openai", "key": "api-key"}
    keys_secret = one(rendered["external-openai"], "Secret", name("model-keys"))
    assert set(keys_secret["data"]) == {"ROLLGATE_MODEL_KEY_JUDGE"}
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": name("model-keys")}}]


def test_agents_configmap_is_a_valid_gateway_config(rendered: dict[str, list[Manifest]], tmp_path: Path) -> None:
    # Parsed by the gateway's own loader: the config the chart writes is one the gateway accepts.
    for scenario, docs in rendered.items():
        cm = one(docs, "ConfigMap", name("agents"))
        path = tmp_path / f"{scenario}.yaml"
        path.write_text(cm["data"]["agents.yaml"], encoding="utf-8")
        cfg = load_config(path)
        services = {s["metadata"]["name"]: s for s in find(docs, "Service")}
        for agent in cfg.agents.values():
            # Every verifier URL names a rendered Service and its port.
            host, port = agent.verifier_url.removeprefix("http://").split(":")
            service = services[host.split(".")[0]]
            assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    gpu_cfg_path = tmp_path / "gpu-vllm.yaml"
    gpu = load_config(gpu_cfg_path).agents["my_agent"].model
    assert gpu.base_urls == [f"http://{name('model-default')}.rollouts.svc:8000/v1"]


def test_unknown_verifier_in_an_agent_fails_with_a_clear_message() -> None:
    err = render_error([ci_values("cpu")], sets=["agents.my_agent.verifier=nope"])
    assert 'agents.my_agent.verifier: "nope" is not the name of a verifier (verifiers: exact, mine)' in err


# --- collector Job ---------------------------------------------------------------------------------------------


def test_collector_job_shards_equal_num_shards(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["sharded-collector"]
    job = one(docs, "Job", name("collect-rl-iter-0"))
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 8 and spec["parallelism"] == 4
    command = spec["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "ng_collect_rollouts"
    args = plus_args(command)
    assert args["num_shards"] == "8"
    assert args["shard_index"] == "$(JOB_COMPLETION_INDEX)"
    # One output file per shard, on the ReadWriteMany volume.
    assert args["output_jsonl_fpath"] == "/data/output/rl-iter-0/shard-$(JOB_COMPLETION_INDEX).jsonl"
    assert args["gateway"] == f"dns:///{name('gateway-headless')}.rollouts.svc:50051"
    assert args["agent_name"] == "my_rl_agent"
    # The values' collector args, in the documented spelling.
    assert args["num_repeats"] == "4" and args["limit"] == "null"
    assert args["responses_create_params.max_output_tokens"] == "1000000"
    pvc = one(docs, "PersistentVolumeClaim", name("rollouts"))
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("shards", [1, 3])
def test_num_shards_drives_completions_and_the_merge_inputs(shards: int) -> None:
    docs = render([ci_values("sharded-collector")],
                  sets=[f"collector.numShards={shards}", "collector.parallelism=null"])
    job = one(docs, "Job", name("collect-rl-iter-0"))
    assert job["spec"]["completions"] == shards == job["spec"]["parallelism"]
    assert plus_args(job["spec"]["template"]["spec"]["containers"][0]["command"])["num_shards"] == str(shards)
    merge = one(docs, "Job", name("merge-rl-iter-0"))["spec"]["template"]["spec"]
    inputs = plus_args(merge["containers"][0]["command"])["inputs"]
    assert inputs == "[" + ",".join(f"/data/output/rl-iter-0/shard-{i}.jsonl" for i in range(shards)) + "]"


def test_merge_job_waits_for_the_shard_job(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["sharded-collector"]
    shard_job = name("collect-rl-iter-0")
    merge = one(docs, "Job", name("merge-rl-iter-0"))["spec"]["template"]["spec"]
    assert merge["containers"][0]["command"][:2] == ["rollgate", "merge"]
    wait = merge["initContainers"][0]
    assert wait["command"][:3] == ["python", "/scripts/wait_for_job.py", shard_job]
    # It may read that one Job and nothing else.
    role = one(docs, "Role", name("merge-rl-iter-0"))
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "resourceNames": [shard_job], "verbs": ["get"]}]
    assert merge["serviceAccountName"] == name("merge-rl-iter-0")


def test_collector_args_the_chart_owns_cannot_be_overridden() -> None:
    err = render_error([ci_values("sharded-collector")], sets=["collector.args.shard_index=3"])
    assert "collector.args.shard_index is set by the chart" in err


def test_collector_needs_an_input_claim() -> None:
    err = render_error([ci_values("sharded-collector")], sets=["collector.input.existingClaim="])
    assert "collector.input.existingClaim is required" in err


# --- gateway: hot-swap, checksum, drain, probes ------------------------------------------------------------------


def _index(docs: list[Manifest]) -> dict[str, Manifest]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _changed(before: list[Manifest], after: list[Manifest]) -> set[str]:
    a, b = _index(before), _index(after)
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_switching_an_agents_verifier_changes_only_the_agents_configmap(rendered: dict[str, list[Manifest]]) -> None:
    before = rendered["cpu"]
    after = render([ci_values("cpu")], sets=["agents.my_agent.verifier=mine"])
    # Nothing restarts: no Deployment's pod template changes, only the hot-swapped ConfigMap.
    assert _changed(before, after) == {f"ConfigMap/{name('agents')}"}
    cm = one(after, "ConfigMap", name("agents"))
    assert name("verifier-mine") in cm["data"]["agents.yaml"]


def test_restart_settings_roll_the_gateway(rendered: dict[str, list[Manifest]]) -> None:
    def checksum(docs: list[Manifest]) -> str:
        pod = one(docs, "Deployment", name("gateway"))["spec"]["template"]
        return str(pod["metadata"]["annotations"]["checksum/config"])

    base = rendered["tls-token"]
    assert checksum(render([ci_values("tls-token")], sets=["auth.token=rotated"])) != checksum(base)
    assert checksum(render([ci_values("tls-token")], sets=["agents.my_agent.maxSteps=3"])) == checksum(base)


def test_agents_configmap_is_mounted_as_a_directory(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        pod = one(docs, "Deployment", name("gateway"))["spec"]["template"]["spec"]
        container = pod["containers"][0]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "agents")
        assert "subPath" not in mount, scenario
        assert arg_after(container["command"], "--config") == mount["mountPath"]
        volume = next(v for v in pod["volumes"] if v["name"] == "agents")
        assert volume["configMap"]["name"] == name("agents")


def test_termination_grace_covers_the_drain(rendered: dict[str, list[Manifest]]) -> None:
    docs = render([ci_values("cpu")], sets=["gateway.drainGraceSeconds=120"])
    pod = one(docs, "Deployment", name("gateway"))["spec"]["template"]["spec"]
    assert arg_after(pod["containers"][0]["command"], "--grace-s") == "120"
    assert pod["terminationGracePeriodSeconds"] > 120


def test_the_stream_bound_reaches_the_gateway() -> None:
    docs = render([ci_values("cpu")], sets=["gateway.maxStreamRollouts=512"])
    command = one(docs, "Deployment", name("gateway"))["spec"]["template"]["spec"]["containers"][0]["command"]
    assert arg_after(command, "--max-stream-rollouts") == "512"


def test_gateway_probes_and_ports_match_its_flags(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        c = one(docs, "Deployment", name("gateway"))["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"grpc": int(arg_after(c["command"], "--port")),
                         "metrics": int(arg_after(c["command"], "--metrics-port"))}
        assert ports == {"grpc": 50051, "metrics": 9090}
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert arg_after(c["command"], "--host") == "0.0.0.0"
        for svc in (name("gateway"), name("gateway-headless")):
            for port in one(docs, "Service", svc)["spec"]["ports"]:
                assert port["targetPort"] in ports, (scenario, svc)


def test_verifier_probes_and_ports_match_its_flags(rendered: dict[str, list[Manifest]]) -> None:
    for d in find(rendered["cpu"], "Deployment"):
        if d["metadata"]["labels"]["app.kubernetes.io/component"] != "verifier":
            continue
        c = d["spec"]["template"]["spec"]["containers"][0]
        port = int(arg_after(c["command"], "--port"))
        assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_verifier_code_from_a_configmap_hot_reloads(rendered: dict[str, list[Manifest]], tmp_path: Path) -> None:
    docs = rendered["cpu"]
    pod = one(docs, "Deployment", name("verifier-mine"))["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["command"][:4] == ["rollgate", "verifier", "serve", "my_verifier:verify"]
    assert "--reload" in c["command"]
    assert {"name": "PYTHONPATH", "value": "/code"} in c["env"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "code")
    assert mount["mountPath"] == "/code" and "subPath" not in mount
    code = one(docs, "ConfigMap", name("verifier-mine-code"))
    assert "def verify(task: dict, response: dict)" in code["data"]["my_verifier.py"]
    # With --reload a code change is picked up in place: the pod template carries no code checksum.
    assert "checksum/code" not in pod["metadata"].get("annotations", {})
    values = yaml.safe_load(ci_values("cpu").read_text(encoding="utf-8"))
    values["verifiers"][1]["code"]["my_verifier.py"] = "def verify(task, response):\n    return 1.0\n"
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(values), encoding="utf-8")
    after = render([edited])
    assert _changed(docs, after) == {f"ConfigMap/{name('verifier-mine-code')}"}


# --- security --------------------------------------------------------------------------------------------------


def test_no_container_runs_as_root(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        for where, spec in pod_specs(docs):
            pod_ctx = spec.get("securityContext", {})
            for c in containers(spec):
                ctx = {**pod_ctx, **c.get("securityContext", {})}
                label = f"{scenario}: {where}/{c['name']}"
                assert ctx.get("runAsNonRoot") is True, label
                assert ctx.get("runAsUser", 0) != 0, label
                assert ctx.get("allowPrivilegeEscalation") is False, label
                assert ctx.get("readOnlyRootFilesystem") is True, label
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], label


def test_only_the_merge_job_gets_an_api_token(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        for where, spec in pod_specs(docs):
            expected = where.startswith(f"Job/{name('merge-')}")
            assert spec.get("automountServiceAccountToken") is expected, (scenario, where)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_network_policies_let_only_collectors_reach_gateways(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["sharded-collector"]
    policies = {p["metadata"]["name"]: p["spec"] for p in find(docs, "NetworkPolicy")}
    assert set(policies) == {name("gateway"), name("verifier"), name("model")}
    pods = dict(pod_specs(docs))
    labels = {
        w: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        for w in [f"{d['kind']}/{d['metadata']['name']}"]
    }
    gateway_labels = labels[f"Deployment/{name('gateway')}"]
    collector_labels = labels[f"Job/{name('collect-rl-iter-0')}"]
    verifier_labels = labels[f"Deployment/{name('verifier-exact')}"]
    assert pods  # the objects exist

    gw = policies[name("gateway")]
    assert _selects(gw["podSelector"]["matchLabels"], gateway_labels)
    assert not _selects(gw["podSelector"]["matchLabels"], verifier_labels)
    grpc_rule = next(r for r in gw["ingress"] if r["ports"] == [{"port": "grpc", "protocol": "TCP"}])
    grpc_peers = [p["podSelector"]["matchLabels"] for p in grpc_rule["from"]]
    assert [_selects(s, collector_labels) for s in grpc_peers] == [True]
    assert not any(_selects(s, verifier_labels) or _selects(s, gateway_labels) for s in grpc_peers)

    ver = policies[name("verifier")]
    assert _selects(ver["podSelector"]["matchLabels"], verifier_labels)
    (rule,) = ver["ingress"]
    assert [_selects(p["podSelector"]["matchLabels"], gateway_labels) for p in rule["from"]] == [True]
    assert not _selects(rule["from"][0]["podSelector"]["matchLabels"], collector_labels)

    model = one(rendered["gpu-vllm"], "Deployment", name("model-default"))
    model_labels = model["spec"]["template"]["metadata"]["labels"]
    model = {p["metadata"]["name"]: p["spec"] for p in find(rendered["gpu-vllm"], "NetworkPolicy")}[name("model")]
    assert _selects(model["podSelector"]["matchLabels"], model_labels)
    gpu_gateway = one(rendered["gpu-vllm"], "Deployment", name("gateway"))["spec"]["template"]["metadata"]["labels"]
    # gpu-vllm opens the metrics ports to the monitoring namespace as well.
    peers = model["ingress"][0]["from"]
    assert _selects(peers[0]["podSelector"]["matchLabels"], gpu_gateway)
    assert peers[1] == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_network_policy_present_in_every_scenario(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        assert len(find(docs, "NetworkPolicy")) == 3, scenario


def test_tls_and_token_reach_gateway_and_collector(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["tls-token"]
    gw = one(docs, "Deployment", name("gateway"))["spec"]["template"]["spec"]
    c = gw["containers"][0]
    tls_mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")["mountPath"]
    for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"), ("--tls-client-ca", "ca.crt")):
        assert arg_after(c["command"], flag) == f"{tls_mount}/{key}"
    assert next(v for v in gw["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "rollgate-gateway-tls"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert env["ROLLGATE_TOKEN"] == {"name": name("auth"), "key": "token", "optional": True}
    assert env["ROLLGATE_ADMIN_TOKEN"]["key"] == "adminToken"
    assert arg_after(c["command"], "--token-env") == "ROLLGATE_TOKEN"
    assert arg_after(c["command"], "--admin-token-env") == "ROLLGATE_ADMIN_TOKEN"
    # Tokens are in a Secret, never in a pod spec or a ConfigMap.
    rendered_text = repr(docs)
    assert rendered_text.count("ci-token-not-a-secret") == 0

    job = one(docs, "Job", name("collect-secure1"))["spec"]["template"]["spec"]
    cc = job["containers"][0]
    args = plus_args(cc["command"])
    mount = next(m for m in cc["volumeMounts"] if m["name"] == "tls")["mountPath"]
    expected = (f"{mount}/ca.crt", f"{mount}/tls.crt", f"{mount}/tls.key")
    assert (args["tls_ca"], args["tls_cert"], args["tls_key"]) == expected
    assert next(v for v in job["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "rollgate-collector-tls"
    assert {e["name"] for e in cc["env"]} >= {"ROLLGATE_TOKEN"}


def test_no_token_means_no_token_env(rendered: dict[str, list[Manifest]]) -> None:
    c = one(rendered["cpu"], "Deployment", name("gateway"))["spec"]["template"]["spec"]["containers"][0]
    assert "ROLLGATE_TOKEN" not in {e["name"] for e in c["env"]}
    assert find(rendered["cpu"], "Secret") == []


# --- observability and helm test ---------------------------------------------------------------------------------


def test_helm_test_pod_checks_gateway_health(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        pod = one(docs, "Pod", name("test-gateway"))
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        url = pod["spec"]["containers"][0]["command"][-1]
        service = one(docs, "Service", name("gateway"))
        metrics = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "metrics")
        assert url == f"http://{name('gateway')}:{metrics}/readyz", scenario


def _component(obj: Manifest) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def test_servicemonitor_behind_a_flag(rendered: dict[str, list[Manifest]]) -> None:
    for scenario, docs in rendered.items():
        monitors = find(docs, "ServiceMonitor")
        assert len(monitors) == (1 if scenario == "gpu-vllm" else 0), scenario
    (sm,) = find(rendered["gpu-vllm"], "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    ports = {e["port"] for e in sm["spec"]["endpoints"]}
    services = find(rendered["gpu-vllm"], "Service")
    selected = [s for s in services if _component(s) in sm["spec"]["selector"]["matchExpressions"][0]["values"]]
    # Every gateway, verifier and model Service is scraped on a port it has; the headless one is not (no double scrape).
    assert {_component(s) for s in selected} == {"gateway", "verifier", "model"}
    for s in selected:
        assert ports & {p["name"] for p in s["spec"]["ports"]}, s["metadata"]["name"]


def test_hpa_and_pdb(rendered: dict[str, list[Manifest]]) -> None:
    hpa = one(rendered["gpu-vllm"], "HorizontalPodAutoscaler", name("gateway"))
    assert hpa["spec"]["scaleTargetRef"]["name"] == name("gateway")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert "replicas" not in one(rendered["gpu-vllm"], "Deployment", name("gateway"))["spec"]
    assert find(rendered["cpu"], "HorizontalPodAutoscaler") == []
    pdb = one(rendered["cpu"], "PodDisruptionBudget", name("gateway"))
    labels = one(rendered["cpu"], "Deployment", name("gateway"))["spec"]["template"]["metadata"]["labels"]
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
