#!/bin/sh
# Builds the seed example's workload images locally, FROM scratch with Debian's static busybox
# (no registry is reachable on the machines Drover is tested on):
#
#   user-service:latest         the seed example's services; each answers HTTP on port 8080
#   order-service:latest        with "<service name> <container hostname>" (the hostname of a
#   drover-test-busybox:latest  Docker container is its short id); the last one is what
#                               Drover's own tests run.
#
# Every image also serves /healthz ("ok") and /cgi-bin/call (a call to user-service by
# name, below), and stops at once on SIGTERM.
#
# Usage: examples/seed/build-images.sh [--force]
#   Builds the images that are missing or from an older recipe; --force rebuilds all.
#   DOCKER (default "docker") names the client to use, e.g. DOCKER=podman.
set -eu

IMAGES="user-service order-service drover-test-busybox"
BUSYBOX=${BUSYBOX:-/bin/busybox}
DOCKER=${DOCKER:-docker}

force=false
for arg in "$@"; do
    case "$arg" in
    --force) force=true ;;
    -h | --help)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build-images.sh: unknown argument: $arg (usage: $0 [--force])" >&2
        exit 2
        ;;
    esac
done

die() {
    echo "build-images.sh: $*" >&2
    exit 1
}

command -v "$DOCKER" >/dev/null 2>&1 ||
    die "'$DOCKER' is not installed; install Docker (apt-get install -y docker.io) or set DOCKER"
"$DOCKER" version >/dev/null 2>&1 ||
    die "the container engine is unavailable: '$DOCKER version' failed (is the daemon running, may this user reach its socket?)"

# Concurrent callers (parallel test binaries) wait for each other instead of racing.
if command -v flock >/dev/null 2>&1; then
    exec 9>"${TMPDIR:-/tmp}/drover-build-images.lock"
    flock 9
fi

# sh stays PID 1 and traps SIGTERM first thing, so `docker stop` ends the container at once
# instead of waiting out the grace period (PID 1 ignores signals it has no handler for).
DOCKERFILE=$(cat <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY call /www/cgi-bin/call
COPY burn /www/cgi-bin/burn
ARG SERVICE_NAME
ENV SERVICE_NAME=${SERVICE_NAME}
LABEL org.opencontainers.image.title=${SERVICE_NAME} \
      org.opencontainers.image.description="Drover seed workload: busybox httpd on port 8080"
EXPOSE 8080
CMD ["/bin/sh", "-c", "trap 'exit 0' TERM INT; set -e; mkdir -p /www; echo \"$SERVICE_NAME $(hostname)\" > /www/index.html; echo ok > /www/healthz; httpd -f -v -p 8080 -h /www & wait"]
EOF
)
# GET /cgi-bin/call[?NAME]: the replica calls http://NAME/ (user-service by default) by
# name and answers "<its name> <its host> -> <what NAME answered>". busybox's nslookup
# has a resolver of its own (its wget and nc crash resolving names: glibc's resolver does
# not link statically), so the name goes through the container's resolver, the cluster DNS
# under Drover, and nc connects to the address it gave.
CALL=$(cat <<'EOF'
#!/bin/sh
target=${QUERY_STRING:-user-service}
case $target in *[!a-z0-9.-]* | "") target=user-service ;; esac
address=$(nslookup "$target" 2>/dev/null | sed -n 's/^Address: *\([0-9.]*\)$/\1/p' | head -n 1)
printf 'Content-Type: text/plain\r\n\r\n'
if [ -z "$address" ]; then
    echo "$SERVICE_NAME $(hostname) -> cannot resolve $target"
    exit 0
fi
answer=$(printf 'GET / HTTP/1.0\r\nHost: %s\r\n\r\n' "$target" | nc -w 3 "$address" 80 | sed '1,/^\r*$/d')
echo "$SERVICE_NAME $(hostname) -> ${answer:-no answer from $target at $address}"
EOF
)
# CPU per request, for the autoscaling tests and benchmarks: /cgi-bin/burn?N counts to N
# (default 20000) in the shell before it answers.
BURN=$(cat <<'EOF'
#!/bin/sh
n=${QUERY_STRING:-20000}
case $n in *[!0-9]* | "") n=20000 ;; esac
i=0
while [ "$i" -lt "$n" ]; do i=$((i + 1)); done
printf 'Content-Type: text/plain\r\n\r\n'
echo "$SERVICE_NAME $(hostname) burned $n"
EOF
)
# Images built from another version of this recipe are rebuilt too.
RECIPE_LABEL=dev.drover.seed.recipe
recipe=$(printf '%s\n%s\n%s\n' "$DOCKERFILE" "$CALL" "$BURN" | cksum | cut -d' ' -f1)

missing=""
for image in $IMAGES; do
    built=$("$DOCKER" image inspect --format "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" \
        "$image:latest" 2>/dev/null || true)
    if $force || [ "$built" != "$recipe" ]; then
        missing="$missing $image"
    fi
done
if [ -z "$missing" ]; then
    echo "build-images.sh: images up to date:$(printf ' %s:latest' $IMAGES) (--force rebuilds)"
    exit 0
fi

# On a fresh Debian/Ubuntu machine, as root, fetch the static busybox the images are made of.
if [ ! -x "$BUSYBOX" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "build-images.sh: installing busybox-static (apt-get)"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null
fi
[ -x "$BUSYBOX" ] ||
    die "$BUSYBOX is missing; install it with: sudo apt-get update && sudo apt-get install -y busybox-static"
if command -v file >/dev/null 2>&1; then
    file -L "$BUSYBOX" | grep -q 'statically linked' ||
        die "$BUSYBOX is not statically linked; install it with: sudo apt-get install -y busybox-static"
fi

context=$(mktemp -d "${TMPDIR:-/tmp}/drover-images.XXXXXX")
trap 'rm -rf "$context"' EXIT
trap 'exit 1' INT TERM
cp "$BUSYBOX" "$context/busybox"
printf '%s\n' "$DOCKERFILE" >"$context/Dockerfile"
printf '%s\n' "$CALL" >"$context/call"
printf '%s\n' "$BURN" >"$context/burn"
chmod 755 "$context/call" "$context/burn"

for image in $missing; do
    echo "build-images.sh: building $image:latest"
    # The classic builder needs no buildx plugin; its deprecation notice is kept out of
    # the output unless the build fails. No cache: Podman's builder (buildah 1.28) reuses a
    # layer built with another SERVICE_NAME, so every image would answer as the first one.
    if ! DOCKER_BUILDKIT=0 "$DOCKER" build --no-cache --quiet --build-arg "SERVICE_NAME=$image" \
        --label "$RECIPE_LABEL=$recipe" --tag "$image:latest" "$context" >"$context/build.log" 2>&1; then
        cat "$context/build.log" >&2
        die "building $image:latest failed"
    fi
    echo "build-images.sh: built $image:latest ($("$DOCKER" image inspect --format '{{.Id}}' "$image:latest"))"
done
