#!/usr/bin/env bash
# `make image`: build the rollgate image under the name the chart runs by default (IMAGE overrides it).
# A Docker engine and the Dockerfile's base image are made available first (scripts/image_lib.sh); a dockerd
# started here is stopped again on the way out. Extra `docker build` flags: IMAGE_BUILD_FLAGS (e.g. --no-cache).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/image_lib.sh
source scripts/image_lib.sh

trap 'image_engine_down' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

image=${IMAGE:-$(image_default_name)}
image_engine_up
image_base_up
# shellcheck disable=SC2086
seconds=$(image_build "$image" ${IMAGE_BUILD_FLAGS:-})
size=$(docker image inspect --format '{{.Size}}' "$image")
image_log "built $image in ${seconds} s, $((size / 1000000)) MB"
