#!/usr/bin/env bash
# `make image-test` (and CI): build the image, then run the gateway and the verifiers from it exactly as the
# chart runs them, collect from this host through them, and check their /metrics. See docs/image.md.
#
#   1. A Docker engine (Debian's docker.io, started here if none answers) and the Dockerfile's base image
#      (pulled, or bootstrapped from Debian's mirror under the name FROM expects): scripts/image_lib.sh.
#   2. `docker build` under the chart's default image name, timed; then the image itself is checked: numeric
#      non-root USER, no pip (venv or system), no compiler, no build-only CA.
#   3. The chart is rendered with `helm template` (IMAGE_TEST_VALUES, default ci/cpu-values.yaml), its model
#      pointed at a fake OpenAI-compatible server on 127.0.0.1 and its ports moved to free ones. Every Deployment
#      that runs the rollgate image becomes one `docker run`: the chart's image, command and env; its pod and
#      container securityContext as --user/--group-add/--read-only/--cap-drop/no-new-privileges (a key that
#      cannot be translated fails the test); ConfigMap volumes as read-only bind mounts of the rendered data,
#      emptyDir as tmpfs; Service names resolving to 127.0.0.1 (--network host: the engine has no bridge).
#      The chart's startup and readiness probes decide when each one is up.
#   4. ng_collect_rollouts from the dev venv collects through the gateway for each agent; every row must carry
#      the reward the verifier gives, and both services' /metrics must count the rollouts.
# Every process and container started here is stopped on the way out, failure or not.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/image_lib.sh
source scripts/image_lib.sh

PY=${PY:-.venv/bin/python}
HELM=${HELM:-.tools/bin/helm}
VALUES=${IMAGE_TEST_VALUES:-helm/rollgate/ci/cpu-values.yaml}
[ -x "$PY" ] || image_die "$PY is missing: run \`make install\` first"
[ -x "$HELM" ] || image_die "$HELM is missing: run \`make tools\` first"
[ -f "$VALUES" ] || image_die "no values file $VALUES"

work=$(mktemp -d -t rollgate-image-test.XXXXXX)
containers=()
model_pid=""

cleanup() {
    local rc=$? c
    set +e
    if [ "$rc" -ne 0 ]; then
        for c in "${containers[@]}"; do
            echo "---- last lines of container $c ----" >&2
            timeout 20 docker logs --tail 40 "$c" >&2 2>&1
        done
        [ -f "$work/model.log" ] && { echo "---- fake model server ----" >&2; tail -n 20 "$work/model.log" >&2; }
    fi
    for c in "${containers[@]}"; do
        timeout 60 docker rm --force "$c" >/dev/null 2>&1 || image_log "could not remove container $c"
    done
    if [ -n "$model_pid" ]; then
        kill -TERM "$model_pid" 2>/dev/null
        wait "$model_pid" 2>/dev/null
    fi
    image_engine_down
    rm -rf "$work"
    if [ "$rc" -eq 0 ]; then
        image_log "image-test PASSED"
    else
        image_log "image-test FAILED (exit $rc); everything it started is stopped"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1-2. engine, base, build, and what the image must (not) contain -----------------------------------------
image=$(image_default_name)
image_engine_up
image_base_up
# shellcheck disable=SC2086
build_s=$(image_build "$image" ${IMAGE_BUILD_FLAGS:-})
size_mb=$(( $(docker image inspect --format '{{.Size}}' "$image") / 1000000 ))
image_log "built $image in ${build_s} s, ${size_mb} MB"

user=$(docker image inspect --format '{{.Config.User}}' "$image")
[[ "$user" =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] || image_die "the image's USER is '$user', not a numeric non-root user"
# shellcheck disable=SC2016  # expanded by the container's shell
timeout 60 docker run --rm --network none --entrypoint /bin/sh "$image" -c '
    set -u
    bad=0
    for py in python3 /usr/bin/python3; do
        if "$py" -c "import pip" 2>/dev/null; then echo "pip is importable by $py"; bad=1; fi
    done
    for tool in pip pip3 gcc cc g++ c++ clang make; do
        if command -v "$tool" >/dev/null 2>&1; then echo "$tool is in the image"; bad=1; fi
    done
    if [ -e /usr/local/share/ca-certificates/build-local.crt ]; then echo "the build-only CA is in the image"; bad=1; fi
    for script in rollgate ng_collect_rollouts ng_viewer; do
        command -v "$script" >/dev/null 2>&1 || { echo "console script $script is missing"; bad=1; }
    done
    exit $bad' || image_die "the image contains what it must not (or lacks a console script)"
image_log "image: USER $user; no pip, no compiler; console scripts present"

# ---- 3. the fake model, the chart, the containers ---------------------------------------------------------------
"$PY" -m tests.fakes.model_server --port 0 >"$work/model.log" 2>&1 &
model_pid=$!
model_url=""
for _ in $(seq 1 100); do
    model_url=$(sed -n 's/.*"url": *"\([^"]*\)".*/\1/p' "$work/model.log" | head -n 1)
    [ -n "$model_url" ] && break
    kill -0 "$model_pid" 2>/dev/null || break
    sleep 0.2
done
[ -n "$model_url" ] || image_die "the fake model server did not start"
image_log "fake model on $model_url"

# --set flags: every model at the fake, the gateway's and each verifier's port on a free loopback port.
mapfile -t overrides < <("$PY" - "$VALUES" "$model_url" <<'PYEOF'
import socket, sys, yaml

values = yaml.safe_load(open(sys.argv[1], encoding="utf-8")) or {}
socks = []
def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)  # held until every port is chosen, so no two are the same
    return s.getsockname()[1]
for name, model in (values.get("models") or {}).items():
    if (model.get("vllm") or {}).get("enabled"):
        sys.exit(f"models.{name}: a vLLM model cannot run here; choose a values file with external models")
    print("--set"); print(f"models.{name}.baseUrls={{{sys.argv[2]}}}")
print("--set"); print(f"gateway.port={free_port()}")
print("--set"); print(f"gateway.metricsPort={free_port()}")
for i, _ in enumerate(values.get("verifiers") or []):
    print("--set"); print(f"verifiers[{i}].port={free_port()}")
PYEOF
)
[ ${#overrides[@]} -gt 0 ] || image_die "could not derive the chart overrides from $VALUES"
timeout 60 "$HELM" template rg helm/rollgate --namespace rollgate-image-test -f "$VALUES" "${overrides[@]}" \
    >"$work/chart.yaml" || image_die "helm template failed"

mkdir -p "$work/plan"
"$PY" - "$work/chart.yaml" "$image" "$user" "$work/plan" <<'PYEOF' || image_die "the chart cannot be run as tested (above)"
"""Translate the rendered chart's Deployments that run the rollgate image into `docker run` arguments."""
import json, os, re, sys
from pathlib import Path
import yaml

rendered, image, image_user, plan = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
docs = [d for d in yaml.safe_load_all(open(rendered, encoding="utf-8")) if d]
configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
services = [d for d in docs if d["kind"] == "Service"]
problems: list[str] = []


def fail(msg: str) -> None:
    problems.append(msg)


def quantity_bytes(q: str) -> str:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    if not m:
        fail(f"memory limit {q!r} not understood")
        return "0"
    mult = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return str(int(m.group(1)) * mult)


def cpus(q: str) -> str:
    q = str(q)
    return str(int(q[:-1]) / 1000) if q.endswith("m") else q


# Every Service name resolves to 127.0.0.1 (host network), so its port must be the container's own.
hosts: list[str] = []
for s in services:
    name, ns = s["metadata"]["name"], s["metadata"].get("namespace", "rollgate-image-test")
    for alias in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"):
        hosts += ["--add-host", f"{alias}:127.0.0.1"]

order: list[str] = []
images_seen: set[str] = set()
for d in docs:
    if d["kind"] != "Deployment":
        continue
    spec = d["spec"]["template"]["spec"]
    dname = d["metadata"]["name"]
    ours = [c for c in spec["containers"] if c["image"].split(":")[0] == image.split(":")[0]]
    if not ours:
        print(f"[image] skipping Deployment {dname}: it does not run the rollgate image", file=sys.stderr)
        continue
    if spec.get("initContainers"):
        fail(f"{dname}: initContainers are not run by this test")
    if len(spec["containers"]) != 1:
        fail(f"{dname}: {len(spec['containers'])} containers; this test runs one per pod")
    c = ours[0]
    images_seen.add(c["image"])
    if c["image"] != image:
        fail(f"{dname}: the chart runs {c['image']}, but `make image` builds {image}")
    args: list[str] = ["--name", f"rollgate-image-test-{dname}", "--network", "host", "--detach"]

    # Security context: pod level, then container level over it (as the kubelet merges them).
    psc, csc = dict(spec.get("securityContext") or {}), dict(c.get("securityContext") or {})
    user, group = psc.pop("runAsUser", None), psc.pop("runAsGroup", None)
    user, group = csc.pop("runAsUser", user), csc.pop("runAsGroup", group)
    non_root = csc.pop("runAsNonRoot", psc.pop("runAsNonRoot", False))
    for g in [psc.pop("fsGroup", None), *psc.pop("supplementalGroups", [])]:
        if g is not None:
            args += ["--group-add", str(g)]
    for where, sc in (("pod", psc), ("container", csc)):
        seccomp = sc.pop("seccompProfile", None)
        if seccomp is not None and seccomp.get("type") != "RuntimeDefault":
            fail(f"{dname}: {where} seccompProfile {seccomp} (only RuntimeDefault = the engine's default)")
    effective_user = user if user is not None else image_user.split(":")[0]
    if user is not None:
        args += ["--user", f"{user}:{group}" if group is not None else str(user)]
    elif group is not None:
        fail(f"{dname}: runAsGroup without runAsUser is not translated")
    if non_root and (not str(effective_user).isdigit() or int(effective_user) == 0):
        fail(f"{dname}: runAsNonRoot, but the user would be {effective_user!r}")
    if csc.pop("readOnlyRootFilesystem", False):
        args.append("--read-only")
    if csc.pop("allowPrivilegeEscalation", True) is False:
        args += ["--security-opt", "no-new-privileges"]
    if csc.pop("privileged", False):
        fail(f"{dname}: privileged")
    caps = csc.pop("capabilities", {}) or {}
    for cap in caps.pop("drop", []) or []:
        args += ["--cap-drop", cap]
    for cap in caps.pop("add", []) or []:
        args += ["--cap-add", cap]
    for left in (psc, csc, caps):
        if left:
            fail(f"{dname}: securityContext keys this test does not translate: {sorted(left)}")

    # Volumes: ConfigMaps as read-only bind mounts of the rendered data, emptyDir as tmpfs.
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        if "subPath" in m:
            fail(f"{dname}: subPath mounts are not translated")
        v = volumes[m["name"]]
        if "configMap" in v:
            cm = configmaps.get(v["configMap"]["name"])
            if cm is None:
                fail(f"{dname}: volume {m['name']} names ConfigMap {v['configMap']['name']}, which the chart lacks")
                continue
            src = plan / "volumes" / dname / m["name"]
            src.mkdir(parents=True)
            for fname, text in (cm.get("data") or {}).items():
                (src / fname).write_text(text, encoding="utf-8")
                os.chmod(src / fname, 0o644)
            for p in (src, src.parent, src.parent.parent):
                os.chmod(p, 0o755)
            args += ["--mount", f"type=bind,source={src},destination={m['mountPath']},readonly"]
        elif "emptyDir" in v:
            args += ["--tmpfs", f"{m['mountPath']}:rw,exec,nosuid,nodev,mode=1777"]
        else:
            fail(f"{dname}: volume {m['name']} ({sorted(v)}) is not translated")

    for e in c.get("env") or []:
        if "value" in e:
            args += ["--env", f"{e['name']}={e['value']}"]
        elif not (e.get("valueFrom", {}).get("secretKeyRef", {}).get("optional")):
            fail(f"{dname}: env {e['name']} comes from {e.get('valueFrom')}; not translated")
    if c.get("envFrom"):
        fail(f"{dname}: envFrom is not translated")
    limits = (c.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        args += ["--memory", quantity_bytes(limits["memory"])]
    if "cpu" in limits:
        args += ["--cpus", cpus(limits["cpu"])]
    if c.get("workingDir"):
        args += ["--workdir", c["workingDir"]]

    command = list(c.get("command") or []) + list(c.get("args") or [])
    if not c.get("command"):
        fail(f"{dname}: no command (the chart always names its console script)")
        continue
    args += hosts + ["--entrypoint", command[0], c["image"], *command[1:]]
    if any("\n" in a for a in args):
        fail(f"{dname}: an argument contains a newline")

    # Probes: the chart's own httpGet paths and ports, with its period x failureThreshold as the deadline.
    ports = {p["name"]: p["containerPort"] for p in c.get("ports") or [] if "name" in p}
    probes = []
    for kind in ("startupProbe", "readinessProbe"):
        probe = c.get(kind)
        if not probe:
            continue
        get = probe.get("httpGet")
        if not get:
            fail(f"{dname}: {kind} is not httpGet")
            continue
        port = ports.get(get["port"], get["port"])
        deadline = int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))
        probes.append(f"{kind} {port} {get['path']} {min(max(deadline, 30), 180)}")
    if not any(p.startswith("startupProbe") for p in probes):
        fail(f"{dname}: no startupProbe")
    for s in services:
        if s["spec"].get("selector", {}).items() <= d["spec"]["template"]["metadata"]["labels"].items():
            for sp in s["spec"]["ports"]:
                target = ports.get(sp.get("targetPort"), sp.get("targetPort", sp["port"]))
                if target != sp["port"]:
                    fail(f"Service {s['metadata']['name']}: port {sp['port']} -> {target}; on the host network "
                         "a Service port must equal the container port")

    kind = d["metadata"]["labels"].get("app.kubernetes.io/component", "")
    order.append(f"{'1' if kind == 'gateway' else '0'} {dname}")  # verifiers first, then the gateway
    (plan / f"{dname}.args").write_text("\n".join(args) + "\n", encoding="utf-8")
    (plan / f"{dname}.probes").write_text("\n".join(probes) + "\n", encoding="utf-8")
    (plan / f"{dname}.component").write_text(kind + "\n", encoding="utf-8")
    if kind == "gateway":
        for flag in ("--port", "--metrics-port"):
            (plan / f"gateway{flag.replace('-', '_')}").write_text(command[command.index(flag) + 1] + "\n")
    else:
        (plan / f"verifier_port.{dname}").write_text(str(command[command.index("--port") + 1]) + "\n")

if not any(o.startswith("1 ") for o in order):
    fail("the chart has no gateway Deployment on the rollgate image")
if not any(o.startswith("0 ") for o in order):
    fail("the chart has no verifier Deployment on the rollgate image")
for p in problems:
    print(f"[image] chart: {p}", file=sys.stderr)
(plan / "order").write_text("\n".join(o.split()[1] for o in sorted(order)) + "\n", encoding="utf-8")
sys.exit(1 if problems else 0)
PYEOF

# Poll http://127.0.0.1:PORT/PATH for a 200 until DEADLINE seconds pass or the container stops.
wait_http() {
    local container=$1 url=$2 deadline=$3 t0
    t0=$(date +%s)
    while :; do
        if timeout 5 "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4)' "$url" \
            >/dev/null 2>&1; then
            return 0
        fi
        [ "$(timeout 20 docker inspect --format '{{.State.Running}}' "$container" 2>/dev/null)" = true ] \
            || image_die "container $container stopped before $url answered"
        [ $(( $(date +%s) - t0 )) -lt "$deadline" ] || image_die "$url did not answer 200 within ${deadline} s"
        sleep 0.5
    done
}

while read -r dname; do
    mapfile -t run_args <"$work/plan/$dname.args"
    containers+=("rollgate-image-test-$dname")
    timeout 120 docker run "${run_args[@]}" >/dev/null || image_die "docker run of $dname failed"
    while read -r kind port path deadline; do
        [ -n "$kind" ] || continue
        wait_http "rollgate-image-test-$dname" "http://127.0.0.1:$port$path" "$deadline"
        image_log "$dname: $kind $path answers on 127.0.0.1:$port"
    done <"$work/plan/$dname.probes"
done <"$work/plan/order"

# The flags took effect: the chart's user, a read-only root, a writable /tmp, no capabilities.
gateway=$(grep -l '^gateway$' "$work"/plan/*.component | head -n 1 | xargs basename | sed 's/\.component$//')
# shellcheck disable=SC2016  # expanded by the container's shell
timeout 60 docker exec "rollgate-image-test-$gateway" /bin/sh -c '
    [ "$(id -u)" = 10001 ] || { echo "runs as uid $(id -u)"; exit 1; }
    if touch /rollgate-probe 2>/dev/null; then echo "the root filesystem is writable"; exit 1; fi
    touch /tmp/rollgate-probe || { echo "/tmp is not writable"; exit 1; }
    grep -q "^CapEff:[[:space:]]*0*$" /proc/self/status || { echo "capabilities left: $(grep CapEff /proc/self/status)"; exit 1; }
    grep -q "^NoNewPrivs:[[:space:]]*1$" /proc/self/status || { echo "no_new_privs is off"; exit 1; }' \
    || image_die "the gateway container does not run with the chart's security context"
image_log "gateway container: uid 10001, read-only root, writable /tmp, no capabilities, no_new_privs"

# ---- 4. collect through the containers, then their /metrics --------------------------------------------------
grpc_port=$(cat "$work/plan/gateway__port")
metrics_port=$(cat "$work/plan/gateway__metrics_port")
"$PY" - "$work/tasks.jsonl" <<'PYEOF'
import json, sys
# The fake model answers what follows `say:`; half the answers are right.
answers = [("Paris", "Paris"), ("Lyon", "Paris"), ("4", "4"), ("5", "4"), ("blue", "blue"), ("red", "blue")]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for said, expected in answers:
        f.write(json.dumps({"responses_create_params": {"input": f"say: {said}"}, "expected_answer": expected}) + "\n")
PYEOF
agents=$("$PY" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "ConfigMap" and "agents.yaml" in d.get("data", {})]
print(" ".join(sorted(yaml.safe_load(docs[0]["data"]["agents.yaml"])["agents"])))' "$work/chart.yaml")
[ -n "$agents" ] || image_die "the chart's agents ConfigMap names no agent"
repeats=2
for agent in $agents; do
    out="$work/rollouts-$agent.jsonl"
    timeout 180 "$(dirname "$PY")/ng_collect_rollouts" +agent_name="$agent" +input_jsonl_fpath="$work/tasks.jsonl" \
        +output_jsonl_fpath="$out" +gateway="127.0.0.1:$grpc_port" +num_samples_in_parallel=4 \
        +num_repeats=$repeats +limit=null >"$work/collect-$agent.out" 2>"$work/collect-$agent.err" \
        || { tail -n 30 "$work/collect-$agent.err" >&2; image_die "ng_collect_rollouts for $agent failed"; }
    "$PY" - "$out" "$work/tasks.jsonl" "$repeats" "$agent" <<'PYEOF' || image_die "the rollouts of $agent are wrong"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
tasks = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
repeats, agent = int(sys.argv[3]), sys.argv[4]
assert len(rows) == len(tasks) * repeats, f"{len(rows)} rows for {len(tasks)} tasks x {repeats}"
for i, row in enumerate(rows):
    task = tasks[i // repeats]
    said = task["responses_create_params"]["input"].removeprefix("say: ")
    want = float(said == task["expected_answer"])
    assert isinstance(row.get("reward"), (int, float)), f"row {i}: no numeric reward: {row.get('reward')!r}"
    assert row["reward"] == want, f"row {i}: reward {row['reward']} for {said!r} vs {task['expected_answer']!r}"
    assert row["_rollout"]["agent"] == agent and row["_rollout"].get("verifier_version"), row["_rollout"]
print(f"[image] {agent}: {len(rows)} rollouts, rewards as the verifier gives them", file=sys.stderr)
PYEOF
done

n_agents=$(wc -w <<<"$agents")
"$PY" - "http://127.0.0.1:$metrics_port/metrics" "$agents" "$repeats" "$work/tasks.jsonl" <<'PYEOF' \
    || image_die "the gateway's /metrics does not count the rollouts"
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
want = int(sys.argv[3]) * sum(1 for _ in open(sys.argv[4], encoding="utf-8"))
samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
for agent in sys.argv[2].split():
    got = samples.get(("rollgate_gateway_rollouts_total", (("agent", agent), ("status", "ok"))))
    assert got == want, f"rollgate_gateway_rollouts_total{{agent={agent},status=ok}} = {got}, want {want}"
print(f"[image] gateway /metrics: {want} ok rollouts per agent", file=sys.stderr)
PYEOF
for f in "$work"/plan/verifier_port.*; do
    port=$(cat "$f")
    "$PY" - "http://127.0.0.1:$port/metrics" "${f##*.}" <<'PYEOF' || image_die "the verifier's /metrics is wrong"
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
ok = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
         if s.name == "rollgate_verifier_requests_total" and s.labels.get("outcome") == "ok")
assert ok > 0, f"no ok requests in rollgate_verifier_requests_total at {sys.argv[1]}"
print(f"[image] {sys.argv[2]} /metrics: {ok:.0f} ok requests", file=sys.stderr)
PYEOF
done
image_log "collected $n_agents agents through $image (${size_mb} MB, built in ${build_s} s)"
