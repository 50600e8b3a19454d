"""The image's entry points are the console scripts the README uses, and so are the chart's commands.

These checks read the Dockerfile (no engine needed): no `# syntax` line, multi-stage on the Debian base that
scripts/image_lib.sh can bootstrap, the wheel built in the builder and installed from wheels only, no compiler
in any stage, no pip in the final one, a numeric non-root user, the image named as the chart runs it. Building
and running it is `make image-test` (scripts/image_test.sh; CI runs it), which needs a Docker engine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tests.helm.chart import CHART, REPO, Manifest, containers, pod_specs

SCRIPTS = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"])
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")
# Commands a rollgate-image container may start besides the console scripts: the interpreter the scripts run on.
INTERPRETER = {"python"}


def _stages() -> list[list[str]]:
    """Dockerfile instructions (continuation lines joined, comments dropped), split by FROM."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    stages: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _exec_form(stage: list[str], instruction: str) -> list[str]:
    (found,) = [line for line in stage if line.upper().startswith(instruction + " ")]
    value = json.loads(found[len(instruction) + 1 :])
    assert isinstance(value, list), f"{instruction} must use the exec (JSON) form"
    return value


def test_readme_commands_are_console_scripts() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    used = set(re.findall(r"^(?:\s*)(ng_[a-z_]+|rollgate)\b", readme, flags=re.MULTILINE))
    assert {"ng_collect_rollouts", "rollgate"} <= used
    assert used <= SCRIPTS


def test_image_entrypoint_is_a_console_script() -> None:
    final = _stages()[-1]
    entrypoint = _exec_form(final, "ENTRYPOINT")
    assert entrypoint[0] in SCRIPTS
    # The venv's bin (where pip puts the console scripts) is on PATH, so every script is callable by name.
    assert re.search(r"PATH=/opt/rollgate/bin:\$PATH", " ".join(final))


def test_chart_commands_are_console_scripts(rendered: dict[str, list[Manifest]]) -> None:
    seen = set()
    for scenario, docs in rendered.items():
        for where, spec in pod_specs(docs):
            for c in containers(spec):
                if not c["image"].startswith("ghcr.io/rollgate/rollgate:"):
                    continue
                command = c["command"]
                seen.add(command[0])
                assert command[0] in SCRIPTS | INTERPRETER, f"{scenario}: {where}/{c['name']} runs {command[0]}"
    assert {"rollgate", "ng_collect_rollouts"} <= seen


def test_chart_subcommands_exist_in_the_front_door(rendered: dict[str, list[Manifest]]) -> None:
    # `rollgate --help` lists the commands the chart runs: gateway serve, verifier serve, merge.
    rollgate = Path(sys.executable).with_name("rollgate")
    listing = subprocess.run([str(rollgate), "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    commands = {line.split()[0] for line in listing.splitlines() if line.startswith("  ")}
    used = {
        c["command"][1]
        for docs in rendered.values()
        for _, spec in pod_specs(docs)
        for c in containers(spec)
        if c["command"][0] == "rollgate"
    }
    assert used == {"gateway", "verifier", "merge"}
    assert used <= commands


APT_INSTALL = re.compile(r"apt-get install ((?:\S+\s*)+?)(?:&&|;|$)")
# What no stage installs: every dependency comes as a wheel, so nothing compiles (pip is told --only-binary).
COMPILERS = {"build-essential", "gcc", "g++", "clang", "cmake", "make", "libc6-dev", "python3-dev", "cython3"}


def _apt_packages(stage: list[str]) -> set[str]:
    packages: set[str] = set()
    for line in stage:
        for match in APT_INSTALL.finditer(line):
            packages |= {w for w in match.group(1).split() if not w.startswith("-")}
    return packages


def test_dockerfile_has_no_syntax_line() -> None:
    # A `# syntax=` directive makes BuildKit fetch a front-end image: nothing here may need a registry but the base.
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE, flags=re.MULTILINE | re.IGNORECASE)


def test_dockerfile_is_two_stages_on_a_debian_base_that_can_be_bootstrapped() -> None:
    stages = _stages()
    assert len(stages) == 2
    builder, final = stages
    match = re.fullmatch(r"FROM (\S+) AS builder", builder[0])
    assert match, builder[0]
    base = match.group(1)
    # scripts/image_lib.sh bootstraps exactly this kind of name from Debian's mirror when no registry answers.
    assert re.fullmatch(r"debian:[a-z]+(-slim)?", base), base
    assert final[0] == f"FROM {base}"


def test_builder_builds_the_wheel_and_installs_from_wheels_only() -> None:
    builder = " ".join(_stages()[0])
    assert re.search(r"pip wheel --no-deps --wheel-dir (\S+) \.", builder)
    assert re.search(r"pip (--python /opt/rollgate/bin/python )?install --only-binary :all: /wheels/rollgate-\*\.whl",
                     builder)
    # The shipped venv is made without pip; the builder's pip lives elsewhere.
    assert "venv --without-pip /opt/rollgate" in builder
    assert "COPY . ." in builder


def test_no_stage_installs_a_compiler() -> None:
    for stage in _stages():
        installed = _apt_packages(stage)
        assert installed, f"{stage[0]}: no apt-get install found (the parser is out of step with the Dockerfile)"
        assert not installed & COMPILERS, f"{stage[0]}: {sorted(installed & COMPILERS)}"
        assert all("--no-install-recommends" in line for line in stage if "apt-get install" in line)


def test_final_stage_has_the_venv_and_python_but_no_pip() -> None:
    final = _stages()[-1]
    assert _apt_packages(final) <= {"python3", "ca-certificates"}
    # Only the built environment comes over: no sources, no wheels, no pip.
    assert [line for line in final if line.startswith("COPY")] == ["COPY --from=builder /opt/rollgate /opt/rollgate"]
    final_text = "\n".join(final)
    for word in ("pip", "venv", "wheel", "LOCAL_CA_CERTS"):
        assert word not in final_text.replace("/opt/rollgate", ""), word


def test_dockerfile_runs_as_the_charts_non_root_user() -> None:
    final = _stages()[-1]
    (user,) = [line for line in final if line.startswith("USER ")]
    uid, gid = user.split()[1].split(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid)
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert f"--uid {uid}" in "\n".join(final)


def _package_folders() -> set[str]:
    """The repository folders pyproject maps into the wheel (package-dir values, or find's includes)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {d.split("/")[0] for d in setuptools.get("package-dir", {}).values() if d}
    packages = setuptools.get("packages", [])
    if isinstance(packages, dict):  # packages.find: the include patterns name the folders
        folders |= {p.rstrip("*").split(".")[0] for p in packages.get("find", {}).get("include", [])}
    assert folders, "pyproject.toml maps no folder into the package"
    return folders


def test_dockerignore_lets_in_the_wheel_sources_only() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the build context is a list of what is let in"
    let_in = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    readme = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["readme"]
    needed = {"pyproject.toml", readme} | _package_folders()
    assert needed <= let_in, sorted(needed - let_in)
    assert not let_in & {".git", ".venv", ".tools", "tests", "bench", "docs", "helm", "scripts"}
    for path in let_in:
        assert (REPO / path).exists(), path


def test_make_image_tags_the_image_the_chart_runs(rendered: dict[str, list[Manifest]]) -> None:
    name = subprocess.run(
        ["bash", "-c", "source scripts/image_lib.sh && image_default_name"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert chart["appVersion"] == version, "the chart's default tag is the release the image is built from"
    assert name.endswith(f":{version}")
    images = {
        c["image"]
        for docs in rendered.values()
        for _, spec in pod_specs(docs)
        for c in containers(spec)
        if c["image"].startswith(name.rsplit(":", 1)[0] + ":")
    }
    assert images == {name}


def test_ci_runs_the_image_test() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make image-test$", ci, flags=re.MULTILINE)
    assert re.search(r"^image-test:", (REPO / "Makefile").read_text(encoding="utf-8"), flags=re.MULTILINE)
