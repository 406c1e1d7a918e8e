#!/bin/sh
# Install tcpsleuth, lean, and the tools it drives into a Debian bookworm root. Run as
# root inside that root: by scripts/build-image.sh (mmdebstrap's customize hook, in a
# chroot) and by the Containerfile (RUN), so the two images cannot drift.
# Usage: install-in-root.sh WHEEL [bpftrace]
#        install-in-root.sh --bpftrace-only
#   WHEEL     tcpsleuth's wheel (pip wheel --no-deps -w dist .)
#   bpftrace  also install bpftrace (tcpsleuth trace, the recorder's short trace):
#             LLVM and Clang libraries, about 200 MB more
#   --bpftrace-only   add bpftrace to a root this script made before (the second tag)
set -eu
export DEBIAN_FRONTEND=noninteractive

clean() {  # what an image does not need: package lists, caches, documentation
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
        /usr/share/doc/* /usr/share/man/* /usr/share/info/* /root/.cache
}

install_packages() {
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ "${1:-}" = --bpftrace-only ]; then
    install_packages bpftrace
    bpftrace --version
    clean
    exit 0
fi
wheel=$1
with_bpftrace=${2:-}

# mount: tcpsleuth trace mounts tracefs where the container runtime did not
packages="python3 python3-venv ca-certificates iproute2 procps tcpdump nftables iptables util-linux mount netbase"
[ "$with_bpftrace" != bpftrace ] || packages="$packages bpftrace"
# shellcheck disable=SC2086
install_packages $packages

# a venv beside Debian's Python: pip from PyPI for the wheel's dependencies, then pip and
# setuptools themselves removed (nothing installs at run time)
python3 -m venv /opt/tcpsleuth
/opt/tcpsleuth/bin/pip install --quiet --no-cache-dir --disable-pip-version-check "$wheel"
/opt/tcpsleuth/bin/pip uninstall --quiet --yes pip setuptools
ln -sf /opt/tcpsleuth/bin/tcpsleuth /usr/local/bin/tcpsleuth
tcpsleuth --version
clean
