#!/usr/bin/env bash
# Install everything tcpsleuth and its tests need on a fresh Debian machine (as root).
# Safe to run again: apt and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    iproute2   # ss, ip netns: sockets and namespaces
    procps     # sysctl
    tcpdump    # captures in tests and the lab
    tshark     # differential tests of the capture analyzer
    nftables   # fault injection inside lab/test namespaces
    netbase    # /etc/services: port names in `ss` output taken without -n
    util-linux # nsenter (bench/bench_sockets.py runs ss inside a namespace)
    bpftrace   # tcpsleuth trace: kernel tracepoints read through BTF
    prometheus # promtool and the server for the exporter and alert-rule tests
    # tcpsleuth lab kernel: build guest kernels with and without the fix, boot them
    linux-source-6.1 # the source the guest kernels are built from
    build-essential bc bison flex libelf-dev libssl-dev cpio kmod xz-utils patch
    dwarves          # pahole: BTF for bpftrace in the guest
    qemu-system-x86  # runs the guest (virtme-ng, from PyPI, drives it)
    busybox-static   # virtme-ng's initramfs
    udev             # names the virtio-serial ports the guest command talks through
    # containers: --netns container:NAME tests, the image (scripts/build-image.sh)
    podman runc      # runc: crun refuses hosts with hybrid cgroups (deploy/container)
    mmdebstrap       # the image's root, from Debian's packages
)

if [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    # tcpsleuth lab run --broker kafka: a JDK, and Maven to resolve Kafka's jars
    command -v java >/dev/null 2>&1 || missing+=(default-jdk-headless)
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # nginx for the lab's own instances (tcpsleuth.lab.nginx runs it in namespaces with
    # its own configuration): installed without starting the packaged service
    if ! dpkg-query -W -f='${Status}' nginx 2>/dev/null | grep -q "ok installed"; then
        [ "${#missing[@]}" -gt 0 ] || apt-get update -qq
        policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            policy=/usr/sbin/policy-rc.d
        fi
        apt-get install -y -qq --no-install-recommends nginx >/dev/null
        [ -z "$policy" ] || rm -f "$policy"
    fi
else
    echo "install.sh: not root, skipping Debian packages (${APT_PACKAGES[*]})" >&2
fi

# the developer's and CI's install: the lab's Kafka clients (lab) and the test tools
python3 -m pip install --quiet --disable-pip-version-check -e '.[test,lab]'
