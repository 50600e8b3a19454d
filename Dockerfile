# rollgate: one image with every entry point (rollgate, ng_collect_rollouts, ng_viewer), used by every container
# of helm/rollgate except vLLM. Built and smoke-tested by `make image` / `make image-test` (docs/image.md):
#   docker build --network host -t ghcr.io/rollgate/rollgate:0.1.0 .
#   docker run --rm ghcr.io/rollgate/rollgate:0.1.0 gateway serve --config /etc/rollgate/agents --host 0.0.0.0
# Debian's own Python (3.11) on Debian's slim base, in both stages: the virtual environment built in the first
# runs unchanged on the second's /usr/bin/python3. Every dependency installs from a wheel, so no stage has a
# compiler (the install says so if one ever would need it).

# ---- builder: build the rollgate wheel, install it and its dependencies into /opt/rollgate.
FROM debian:bookworm-slim AS builder
# Certificate authorities the build machine's administrator added (PEM; `make image` passes the host's
# /usr/local/share/ca-certificates, empty elsewhere), for a TLS-inspecting proxy in front of PyPI. Only this
# stage trusts them: the final image never sees them.
ARG LOCAL_CA_CERTS=""
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && if [ -n "$LOCAL_CA_CERTS" ]; then \
        printf '%s\n' "$LOCAL_CA_CERTS" > /usr/local/share/ca-certificates/build-local.crt \
        && update-ca-certificates; \
    fi
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# pip lives in a venv of its own (/opt/pip), never in the one the image ships.
RUN python3 -m venv /opt/pip \
    && python3 -m venv --without-pip /opt/rollgate
# Only what .dockerignore lets in: pyproject.toml, README.md and the package folders.
WORKDIR /src
COPY . .
RUN /opt/pip/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/pip/bin/pip --python /opt/rollgate/bin/python install --only-binary :all: /wheels/rollgate-*.whl \
    && /opt/rollgate/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('pip') is not None)"

# ---- final: Debian's python3 and the virtual environment; no pip, no compiler, no sources; a non-root user.
FROM debian:bookworm-slim
# ca-certificates: models behind https (an external OpenAI-compatible endpoint).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 rollgate \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rollgate
COPY --from=builder /opt/rollgate /opt/rollgate
ENV PATH=/opt/rollgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# gateway gRPC, gateway metrics/health, verifier HTTP
EXPOSE 50051 9090 8001
ENTRYPOINT ["rollgate"]
CMD ["--help"]
