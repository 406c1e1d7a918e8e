#!/bin/sh
# Make a tcpsleuth bundle with standard tools only, on a host where tcpsleuth is not
# installed (CentOS 7 and other old systems included). Read-only: it changes nothing.
#   sh collect-bundle.sh OUT_DIR [/path/to/server.properties]
# Then, anywhere tcpsleuth runs:  tcpsleuth audit --bundle OUT_DIR
set -u
out=${1:?usage: collect-bundle.sh OUT_DIR [server.properties]}
mkdir -p "$out" || exit 1
uname -r > "$out/uname-r.txt"
cat /proc/version > "$out/proc-version.txt" 2>/dev/null
hostname > "$out/hostname.txt" 2>/dev/null
sysctl -a > "$out/sysctl-a.txt" 2>/dev/null
cat /proc/net/netstat > "$out/proc-net-netstat.txt"
cat /proc/net/snmp > "$out/proc-net-snmp.txt"
ss -ltn > "$out/ss-ltn.txt"
# receive buffers (-m: skmem rb) and owning processes (-p: needs root for others' sockets)
ss -ltnmp > "$out/ss-ltnmp.txt"
ss -tni > "$out/ss-tni.txt"
if [ "$#" -ge 2 ]; then cp "$2" "$out/server.properties"; fi
echo "bundle written to $out"
