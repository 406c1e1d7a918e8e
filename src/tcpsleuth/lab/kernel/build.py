"""Build the lab's guest kernels from Debian's ``linux-source-6.1``.

Two variants: ``fixed`` is the source as Debian ships it (it carries the SYN-cookie
window-scale fix, mainline 5.10); ``prefix`` is the same source with that fix
reverted (``revert-909172a14974.patch`` next to this module), i.e. a kernel with
the bug. Both use one configuration: what virtme-ng makes for a guest plus the
options the lab needs, all built in.

Everything lives under the user's cache directory (``$XDG_CACHE_HOME`` or
``~/.cache``) in ``tcpsleuth/kernel/``:

- ``src/<source-version>/`` the unpacked source, configured and built in place;
  the ``prefix`` build applies the patch to this tree, rebuilds (about a minute
  after a full build) and takes the patch back out.
- ``images/<name>-<key>/`` one built kernel: ``bzImage`` and ``build.json``. The
  key hashes the source version, the configuration and the patch, so a second
  build of the same thing is instant and a change of any of them builds anew.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tcpsleuth.errors import EnvironmentProblem

SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
PATCH = Path(__file__).with_name("revert-909172a14974.patch")
VARIANTS = {
    "fixed": "Debian's linux-source-6.1 as shipped: has the SYN-cookie window-scale fix",
    "prefix": "the same source with commit 909172a14974 reverted: has the bug",
}
# On top of `vng --kconfig`: what the lab, the probe and the tracer need, built in
# (the guest boots the bare bzImage, without modules).
CONFIG_ITEMS = (
    # the subject: SYN cookies over IPv4 and IPv6 (virtme-ng turns IPv6 off)
    "CONFIG_SYN_COOKIES=y",
    "CONFIG_IPV6=y",
    # namespaces, links and the relay
    "CONFIG_NAMESPACES=y",
    "CONFIG_NET_NS=y",
    "CONFIG_VETH=y",
    "CONFIG_TUN=y",
    "CONFIG_PACKET=y",
    # sock_diag with tcp_info (ss -i, tcpsleuth sockets): without them no wscale
    "CONFIG_INET_DIAG=y",
    "CONFIG_INET_TCP_DIAG=y",
    "CONFIG_INET_UDP_DIAG=y",
    # SOCK_DESTROY (`ss -K`, tcpsleuth heal): many distribution kernels lack it
    "CONFIG_INET_DIAG_DESTROY=y",
    "CONFIG_PACKET_DIAG=y",
    # nftables as the lab's faults use it
    "CONFIG_NETFILTER=y",
    "CONFIG_NF_TABLES=y",
    "CONFIG_NF_TABLES_INET=y",
    "CONFIG_NF_TABLES_IPV4=y",
    "CONFIG_NF_TABLES_IPV6=y",
    "CONFIG_NFT_NUMGEN=y",
    "CONFIG_NFT_CT=y",
    "CONFIG_NFT_REJECT=y",  # heal's fallback: a reject for the client of an ended connection
    "CONFIG_NF_CONNTRACK=y",
    # nflog, so that `tcpdump -i nflog:N` reads what a rule logs in the guest as on
    # the host (the storm tests tried it for their truth; it lost most of a storm's
    # SYN-ACKs there, so they mark cookies with DSCP instead)
    "CONFIG_NETFILTER_NETLINK=y",
    "CONFIG_NETFILTER_NETLINK_LOG=y",
    "CONFIG_NFT_LOG=y",
    # queueing disciplines: netem for delay, tbf for a slow link
    "CONFIG_NET_SCHED=y",
    "CONFIG_NET_SCH_NETEM=y",
    "CONFIG_NET_SCH_TBF=y",
    "CONFIG_NET_SCH_FQ_CODEL=y",
    # tracing: kprobes and BPF, with BTF so bpftrace can read struct tcp_sock
    "CONFIG_KPROBES=y",
    "CONFIG_KPROBE_EVENTS=y",
    "CONFIG_FTRACE=y",
    "CONFIG_BPF=y",
    "CONFIG_BPF_SYSCALL=y",
    "CONFIG_BPF_JIT=y",
    "CONFIG_BPF_EVENTS=y",
    "CONFIG_PERF_EVENTS=y",
    "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y",
    "CONFIG_DEBUG_INFO_BTF=y",
    "CONFIG_DEBUG_INFO_REDUCED=n",
    "CONFIG_DEBUG_INFO_SPLIT=n",
    # no module signing or compression to slow the build
    "CONFIG_MODULE_SIG=n",
    "CONFIG_MODULE_COMPRESS_NONE=y",
)
TOOLS = {
    "vng": "pip install virtme-ng",
    "make": "apt-get install build-essential",
    "gcc": "apt-get install build-essential",
    "flex": "apt-get install flex",
    "bison": "apt-get install bison",
    "bc": "apt-get install bc",
    "pahole": "apt-get install dwarves",
    "patch": "apt-get install patch",
}


@dataclass(frozen=True)
class BuiltKernel:
    name: str
    image: Path
    release: str
    source_version: str
    key: str
    build_seconds: float
    cached: bool

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "image": str(self.image),
            "release": self.release,
            "source_version": self.source_version,
            "key": self.key,
            "build_seconds": round(self.build_seconds, 1),
            "cached": self.cached,
            "what": VARIANTS[self.name],
        }


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tcpsleuth" / "kernel"


def source_version() -> str:
    """The Debian version of the installed source package (what the cache is keyed by)."""
    if not SOURCE_TARBALL.is_file():
        raise EnvironmentProblem(
            f"{SOURCE_TARBALL} is missing: install it with "
            f"`apt-get install {SOURCE_PACKAGE}` (or run scripts/install.sh)"
        )
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        stat = SOURCE_TARBALL.stat()
        out = f"unpackaged-{stat.st_size}-{int(stat.st_mtime)}"
    return out


def image_key(name: str, version: str) -> str:
    digest = hashlib.sha256()
    digest.update(version.encode())
    digest.update("\n".join(CONFIG_ITEMS).encode())
    if name == "prefix":
        digest.update(PATCH.read_bytes())
    return digest.hexdigest()[:12]


def image_dir(name: str, version: str) -> Path:
    return cache_root() / "images" / f"{name}-{image_key(name, version)}"


def find(name: str) -> BuiltKernel | None:
    """The cached kernel NAME for the installed source, or None."""
    if name not in VARIANTS:
        raise EnvironmentProblem(f"no kernel named {name!r}: choose one of {', '.join(VARIANTS)}")
    version = source_version()
    folder = image_dir(name, version)
    info = folder / "build.json"
    if not (folder / "bzImage").is_file() or not info.is_file():
        return None
    meta = json.loads(info.read_text())
    return BuiltKernel(
        name,
        folder / "bzImage",
        meta["release"],
        version,
        folder.name.rsplit("-", 1)[1],
        meta["build_seconds"],
        cached=True,
    )


def require(name: str) -> BuiltKernel:
    kernel = find(name)
    if kernel is None:
        raise EnvironmentProblem(
            f"the {name} kernel is not built yet: run `tcpsleuth lab kernel build {name}` "
            "(about 15 minutes on 2 cores the first time)"
        )
    return kernel


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_tools() -> None:
    missing = [f"{tool} ({how})" for tool, how in TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise EnvironmentProblem(
            "building a guest kernel needs " + ", ".join(missing) + " (scripts/install.sh "
            "installs them all)"
        )


def _unpacked(version: str) -> Path:
    """The source tree for VERSION, unpacked once (atomically, so an interrupted
    unpack is never mistaken for a tree)."""
    folder = cache_root() / "src" / version
    tree = folder / SOURCE_PACKAGE
    if tree.is_dir():
        return tree
    staging = folder.with_name(folder.name + ".unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(SOURCE_TARBALL) as archive:
        archive.extractall(staging, filter="tar")
    if not (staging / SOURCE_PACKAGE / "Makefile").is_file():
        raise EnvironmentProblem(f"{SOURCE_TARBALL} does not hold a {SOURCE_PACKAGE}/ tree")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return tree


PATCH_MARK = ".tcpsleuth-patched"
CONFIG_MARK = ".tcpsleuth-config"


def _patch(tree: Path, reverse: bool) -> None:
    argv = ["patch", "-p1", "--forward", "--silent"] + (["-R"] if reverse else [])
    result = subprocess.run(argv, cwd=tree, input=PATCH.read_text(), capture_output=True, text=True)
    if result.returncode != 0:
        raise EnvironmentProblem(
            f"the revert patch does not apply to {tree}: {result.stdout.strip()[:200]}"
        )
    mark = tree / PATCH_MARK
    if reverse:
        mark.unlink(missing_ok=True)
    else:
        mark.write_text(PATCH.name)


def _configured(tree: Path, log: Path) -> None:
    """Configure the tree (once per set of config items)."""
    wanted = hashlib.sha256("\n".join(CONFIG_ITEMS).encode()).hexdigest()
    mark = tree / CONFIG_MARK
    if mark.is_file() and mark.read_text() == wanted and (tree / ".config").is_file():
        return
    argv = ["vng", "--kconfig"]
    for item in CONFIG_ITEMS:
        argv += ["--configitem", item]
    with open(log, "a") as out:
        result = subprocess.run(argv, cwd=tree, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise EnvironmentProblem(f"vng --kconfig failed in {tree}: see {log}")
    config = (tree / ".config").read_text()
    dropped = []
    for item in CONFIG_ITEMS:
        key, value = item.split("=", 1)
        have = re.search(rf"^{key}=(\S+)$", config, re.MULTILINE)
        if value == "n":
            if have:
                dropped.append(item)
        elif not have or have.group(1) != value:
            dropped.append(item)
    if dropped:
        raise EnvironmentProblem(
            "the kernel configuration lost " + ", ".join(dropped) + f" (dependencies; see {log})"
        )
    mark.write_text(wanted)


def _make(tree: Path, log: Path, on_line: Callable[[str], None]) -> None:
    argv = ["make", f"-j{os.cpu_count() or 1}", "bzImage"]
    with open(log, "a") as out:
        process = subprocess.Popen(
            argv, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            on_line(line.rstrip())
        status = process.wait()
    if status != 0:
        raise EnvironmentProblem(f"the kernel build failed (exit {status}): see {log}")


def build(name: str, on_line: Callable[[str], None] = lambda line: None) -> BuiltKernel:
    """Build kernel NAME (``fixed`` or ``prefix``) unless it is cached already."""
    kernel = find(name)
    if kernel is not None:
        return kernel
    _check_tools()
    version = source_version()
    root = cache_root()
    with _locked(root):
        kernel = find(name)  # another build may have made it while we waited
        if kernel is not None:
            return kernel
        started = time.monotonic()
        tree = _unpacked(version)
        log = root / f"build-{name}.log"
        log.write_text("")
        if (tree / PATCH_MARK).exists():  # an interrupted prefix build
            _patch(tree, reverse=True)
        _configured(tree, log)
        if name == "prefix":
            _patch(tree, reverse=False)
        try:
            _make(tree, log, on_line)
            release = subprocess.run(
                ["make", "-s", "kernelrelease"], cwd=tree, capture_output=True, text=True
            ).stdout.strip()
            folder = image_dir(name, version)
            staging = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            shutil.copy2(tree / "arch/x86/boot/bzImage", staging / "bzImage")
            seconds = time.monotonic() - started
            (staging / "build.json").write_text(
                json.dumps(
                    {
                        "name": name,
                        "release": release,
                        "source_version": version,
                        "config_items": list(CONFIG_ITEMS),
                        "patch": PATCH.name if name == "prefix" else None,
                        "build_seconds": round(seconds, 1),
                    },
                    indent=2,
                )
            )
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        finally:
            if name == "prefix":
                _patch(tree, reverse=True)
    built = find(name)
    assert built is not None
    return BuiltKernel(**{**built.__dict__, "cached": False})


def cached() -> list[BuiltKernel]:
    return [k for name in VARIANTS if (k := find(name)) is not None]
