# Helpers shared by scripts/image_build.sh and scripts/image_test.sh (sourced, not run). See docs/image.md.
#
#   image_engine_up     a Docker engine that answers: the one already running, or dockerd from Debian's
#                       `docker.io` package, installed and started here (root only) and stopped by image_engine_down
#   image_engine_down   stops the dockerd that image_engine_up started (nothing else)
#   image_base_up       every base image the Dockerfile's FROM lines name: present, pulled, or (no registry)
#                       bootstrapped from Debian's mirror with mmdebstrap and imported under that very name
#   image_default_name  the image the chart runs by default: values.yaml image.repository : Chart.yaml appVersion
#   image_build NAME    docker build of the repository root, tagged NAME; prints the seconds it took

_image_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE_DOCKERD_PID=""
IMAGE_DOCKERD_LOG=""

image_log() { printf '[image] %s\n' "$*" >&2; }
image_die() { printf '[image] FAILED: %s\n' "$*" >&2; exit 1; }

_image_engine_answers() { timeout 20 docker info >/dev/null 2>&1; }

image_engine_up() {
    command -v docker >/dev/null 2>&1 || [ "$(id -u)" = 0 ] || image_die "no docker CLI, and not root to install one"
    if command -v docker >/dev/null 2>&1 && _image_engine_answers; then
        image_log "using the Docker engine already running"
        return 0
    fi
    [ "$(id -u)" = 0 ] || image_die "no Docker engine answers, and only root can install and start one here"
    if ! command -v dockerd >/dev/null 2>&1; then
        image_log "installing a Docker engine from Debian's packages (docker.io)"
        export DEBIAN_FRONTEND=noninteractive
        timeout 600 apt-get update -qq || image_die "apt-get update failed"
        timeout 900 apt-get install -y -qq --no-install-recommends docker.io >/dev/null \
            || image_die "could not install docker.io"
        # Where no policy-rc.d stops it, the package starts its own service: that one is the system's now.
        if _image_engine_answers; then
            image_log "using the Docker engine the docker.io package started"
            return 0
        fi
    fi
    IMAGE_DOCKERD_LOG=$(mktemp -t rollgate-dockerd.XXXXXX.log)
    # No bridge and no iptables (these machines have neither): builds and containers use --network host.
    setsid dockerd --iptables=false --ip-masq=false --ip-forward=false --bridge=none \
        >"$IMAGE_DOCKERD_LOG" 2>&1 </dev/null &
    IMAGE_DOCKERD_PID=$!
    image_log "started dockerd (pid $IMAGE_DOCKERD_PID, log $IMAGE_DOCKERD_LOG)"
    for _ in $(seq 1 60); do
        if _image_engine_answers; then return 0; fi
        kill -0 "$IMAGE_DOCKERD_PID" 2>/dev/null || break
        sleep 1
    done
    tail -n 20 "$IMAGE_DOCKERD_LOG" >&2 || true
    image_die "dockerd did not answer within 60 s"
}

image_engine_down() {
    [ -n "$IMAGE_DOCKERD_PID" ] || return 0
    local pid=$IMAGE_DOCKERD_PID
    IMAGE_DOCKERD_PID=""
    kill -TERM "$pid" 2>/dev/null || return 0
    # dockerd stops the containerd it started itself before it exits.
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        image_log "dockerd (pid $pid) still running after 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    image_log "stopped dockerd (pid $pid)"
    rm -f "$IMAGE_DOCKERD_LOG"
}

# The base images: FROM arguments that are not the name of an earlier stage.
_image_bases() {
    awk 'toupper($1) == "FROM" {
            ref = ""; for (i = 2; i <= NF; i++) if ($i !~ /^--/) { ref = $i; break }
            if (!(ref in stage)) print ref
            if (toupper($(NF-1)) == "AS") stage[$NF] = 1
         }' "$_image_root/Dockerfile" | sort -u
}

_image_bootstrap_debian() {
    local name=$1 suite=$2 slim=$3 work sources=() opts=()
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || image_die "mmdebstrap is missing and only root can install it"
        image_log "installing mmdebstrap from Debian's packages"
        export DEBIAN_FRONTEND=noninteractive
        timeout 600 apt-get update -qq || image_die "apt-get update failed"
        timeout 900 apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null \
            || image_die "could not install mmdebstrap"
    fi
    # The mirror this machine's apt already uses, when it serves that suite; otherwise mmdebstrap's default.
    # shellcheck disable=SC1091
    if [ -n "${ROLLGATE_DEBIAN_SOURCES:-}" ]; then
        sources=("$ROLLGATE_DEBIAN_SOURCES")
    elif [ -f /etc/apt/sources.list.d/debian.sources ] && [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = "$suite" ]; then
        sources=(/etc/apt/sources.list.d/debian.sources)
    fi
    if [ "$slim" = 1 ]; then
        # What Debian's own -slim images leave out (their /etc/dpkg/dpkg.cfg.d/docker), kept for later installs too.
        local p
        for p in doc man info locale groff lintian linda; do
            opts+=("--dpkgopt=path-exclude=/usr/share/$p/*")
        done
        opts+=("--dpkgopt=path-include=/usr/share/doc/*/copyright")
    fi
    work=$(mktemp -d -t rollgate-base.XXXXXX)
    image_log "bootstrapping $name: Debian $suite (minbase) from Debian's mirror with mmdebstrap"
    if ! timeout 900 mmdebstrap --quiet --mode=root --variant=minbase --format=tar \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --aptopt='Acquire::Languages "none"' "${opts[@]}" \
            "$suite" "$work/rootfs.tar" "${sources[@]}"; then
        rm -rf "$work"
        image_die "mmdebstrap could not bootstrap Debian $suite"
    fi
    # The same config as Debian's published image: the default PATH and bash as the command.
    timeout 300 docker import --message "Debian $suite minbase, bootstrapped with mmdebstrap" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        "$work/rootfs.tar" "$name" >/dev/null || { rm -rf "$work"; image_die "docker import of $name failed"; }
    rm -rf "$work"
}

image_base_up() {
    local base suite slim
    for base in $(_image_bases); do
        if docker image inspect "$base" >/dev/null 2>&1; then
            image_log "base $base: present"
            continue
        fi
        if timeout 300 docker pull --quiet "$base" >/dev/null 2>&1; then
            image_log "base $base: pulled"
            continue
        fi
        if [[ "$base" =~ ^(docker\.io/)?(library/)?debian:([a-z]+)(-slim)?$ ]]; then
            suite=${BASH_REMATCH[3]}
            slim=0
            [ -n "${BASH_REMATCH[4]}" ] && slim=1
            _image_bootstrap_debian "$base" "$suite" "$slim"
            image_log "base $base: bootstrapped from Debian's mirror"
        else
            image_die "base $base cannot be pulled, and only debian:SUITE[-slim] can be bootstrapped here"
        fi
    done
}

image_default_name() {
    local repo tag version
    repo=$(awk '/^image:/ {inside = 1; next} /^[^ #]/ {inside = 0} inside && $1 == "repository:" {print $2; exit}' \
        "$_image_root/helm/rollgate/values.yaml")
    tag=$(awk '/^image:/ {inside = 1; next} /^[^ #]/ {inside = 0} inside && $1 == "tag:" {print $2; exit}' \
        "$_image_root/helm/rollgate/values.yaml" | tr -d '"')
    version=$(awk '$1 == "appVersion:" {print $2; exit}' "$_image_root/helm/rollgate/Chart.yaml" | tr -d '"')
    [ -n "$repo" ] && [ -n "${tag:-$version}" ] || image_die "cannot read the chart's default image"
    echo "$repo:${tag:-$version}"
}

# image_build NAME [docker build flags...]: prints the build's wall seconds on stdout.
image_build() {
    local name=$1 start end
    shift
    local cas=() f
    # The host's locally added certificate authorities (a TLS-inspecting proxy in front of PyPI), for the
    # builder stage only (see the Dockerfile).
    for f in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$f" ] && cas+=("$f")
    done
    if [ ${#cas[@]} -gt 0 ]; then
        set -- --build-arg "LOCAL_CA_CERTS=$(cat "${cas[@]}")" "$@"
    fi
    start=$(date +%s.%N)
    # The classic builder (no BuildKit front end to fetch); --network host because the engine has no bridge.
    DOCKER_BUILDKIT=0 timeout 1800 docker build --network host --force-rm --tag "$name" "$@" "$_image_root" >&2 \
        || image_die "docker build of $name failed"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.0f\n", e - s }'
}
