#!/usr/bin/env bash
# Build tcpsleuth's container image from Debian's packages alone (no image registry):
# mmdebstrap makes a minimal bookworm root with apt's own configuration, the same
# deploy/container/install-in-root.sh the Containerfile runs installs tcpsleuth lean and
# the tools it drives inside it, and `podman import` leaves it in the local store as
#   localhost/tcpsleuth:latest            tcpsleuth, iproute2, tcpdump, nftables, iptables
#   localhost/tcpsleuth:latest-bpftrace   the same with bpftrace (tcpsleuth trace)
# Usage (as root): scripts/build-image.sh [--no-bpftrace] [--tag TAG]
# Needs mmdebstrap and podman (scripts/install.sh installs both). Runs niced.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

tag=latest
bpftrace=yes
while [ $# -gt 0 ]; do
    case $1 in
        --no-bpftrace) bpftrace=no ;;
        --tag) tag=$2; shift ;;
        *) echo "usage: $0 [--no-bpftrace] [--tag TAG]" >&2; exit 2 ;;
    esac
    shift
done
image=localhost/tcpsleuth
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/deploy/container/containers.conf}
for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is missing (scripts/install.sh)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "$0: run as root (mmdebstrap makes device files)" >&2; exit 2; }

work=$(mktemp -d /var/tmp/tcpsleuth-image.XXXXXX)
trap 'rm -rf "$work"' EXIT

# the wheel, built from a copy so that the tree gets no build/ directory
mkdir -p "$work/source" "$work/dist"
cp -r pyproject.toml README.md src "$work/source/"
find "$work/source" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
nice -n 10 python3 -m pip wheel --quiet --no-deps --disable-pip-version-check \
    -w "$work/dist" "$work/source"
wheel=$(basename "$(ls "$work"/dist/tcpsleuth-*.whl)")
version=$(python3 -c "import sys; print(sys.argv[1].split('-')[1])" "$wheel")

# the mirrors apt uses here (bookworm, -updates, -security)
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list

# pip inside the root trusts, for this build only, the certificates this host's pip
# trusts (a host behind a TLS-inspecting proxy has its authority there); the variables
# that would point pip's requests at the root's own bundle instead are dropped
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[ -f "$ca" ] || ca=/dev/null

echo "build-image: bookworm root with tcpsleuth $version (mmdebstrap)" >&2
nice -n 10 mmdebstrap --quiet --variant=apt --mode=root --format=directory \
    --customize-hook="copy-in deploy/container/install-in-root.sh $work/dist/$wheel /tmp" \
    --customize-hook="cat '$ca' > \"\$1/tmp/build-ca.crt\"" \
    --customize-hook="env -u PIP_FIND_LINKS -u REQUESTS_CA_BUNDLE -u CURL_CA_BUNDLE PIP_CERT=/tmp/build-ca.crt chroot \"\$1\" sh /tmp/install-in-root.sh /tmp/$wheel" \
    --customize-hook='rm -f "$1"/tmp/install-in-root.sh "$1"/tmp/*.whl "$1"/tmp/build-ca.crt' \
    bookworm "$work/root" "$sources" </dev/null

labels=(
    --change 'ENTRYPOINT ["tcpsleuth"]'
    --change 'CMD ["doctor"]'
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change 'ENV NUMBA_CACHE_DIR=/tmp/numba'
    --change 'LABEL org.opencontainers.image.title=tcpsleuth'
    --change "LABEL org.opencontainers.image.version=$version"
    --change "LABEL org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
    # the last commit that changed what goes in: tests/system/packaging/test_image.py rebuilds when it moves
    --change "LABEL tcpsleuth.source-revision=$(git log -1 --format=%H -- src pyproject.toml \
        deploy/container scripts/build-image.sh 2>/dev/null || echo unknown)"
    --change "LABEL org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    --change 'LABEL org.opencontainers.image.licenses=Apache-2.0'
    --change 'LABEL org.opencontainers.image.base.name=debian:bookworm'
    --change 'LABEL org.opencontainers.image.description="tcpsleuth: SYN cookies, listen queues and window scales on broker hosts. Run: podman run --rm --net=host --pid=host --privileged -v /run/netns:/run/netns:rslave IMAGE doctor"'
)

import_root() {  # ROOT TAG
    previous=$(podman image inspect --format '{{.Id}}' "$image:$2" 2>/dev/null || true)
    tar -C "$1" --numeric-owner --xattrs -cf - . |
        nice -n 10 podman import --quiet "${labels[@]}" - "$image:$2" >/dev/null
    # the image the tag named before, now untagged: gone unless a container still uses it
    [ -z "$previous" ] || podman rmi "$previous" >/dev/null 2>&1 || true
    echo "build-image: $image:$2 $(podman image inspect --format '{{.Size}}' "$image:$2") bytes" >&2
}

import_root "$work/root" "$tag"

if [ "$bpftrace" = yes ]; then
    # the same root with bpftrace added (its LLVM and Clang libraries are about 200 MB):
    # in a mount namespace of its own, so /proc and /dev mounted for apt vanish after it
    echo "build-image: adding bpftrace for $image:$tag-bpftrace" >&2
    cp deploy/container/install-in-root.sh "$work/root/tmp/"
    nice -n 10 unshare --mount --fork sh -c '
        set -e
        root=$1
        mount --make-rprivate /
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        cp /etc/resolv.conf "$root/etc/resolv.conf"
        chroot "$root" sh /tmp/install-in-root.sh --bpftrace-only
        : > "$root/etc/resolv.conf"
    ' sh "$work/root"
    rm -f "$work/root/tmp/install-in-root.sh"
    import_root "$work/root" "$tag-bpftrace"
fi
