"""Speed of `tcpsleuth pcap` against tshark and dpkt on one large capture.

Builds (once, cached) a capture of at least 2 million packets written as
``tcpdump -s 128`` writes: Ethernet, headers plus the first payload bytes. It holds
many short Kafka-framed connections (IPv4 and IPv6, handshake with options, one
request and one response, FIN exchange; client ports reused so that 4-tuples
repeat after TIME_WAIT) and a few bulk streams. Then times, each in one run:

- reading the file into memory (the floor),
- tcpsleuth's per-connection pass (read, decode, connections with handshake
  options, packets, bytes, windows, retransmissions),
- tcpsleuth's full analysis (plus window inference, SYN cookies, rwnd-limited
  and Kafka request timing),
- ``tshark -T fields`` extracting the same per-packet fields,
- ``tshark -q -z conv,tcp``,
- dpkt doing the per-connection job in Python,

and prints packets per second for each and the ratios. Each tcpsleuth run is made
in a fresh process, after a warm-up on a small capture, and reports its peak
resident memory (VmHWM, reset after the warm-up) next to the memory before it.
Then the same on a capture with the same short connections and twice the packets
(longer bulk streams): the per-connection state is the same, so the peak must be
too, whatever the number of packets.

CPU seconds (all threads) are printed beside wall seconds: above the wall time,
the passes that split ran on several cores.

With ``--against OTHER/src`` it times another checkout (a git worktree of the commit
before a change) and this one, alternating them ``--rounds`` times in one run:
the split passes (reading, decoding, connections), the full analysis, and
``tcpsleuth pcap`` as a whole process; medians of wall and CPU time, and the speed-up.

Run from the repository root:
    python3 bench/bench_pcap.py [--packets N] [--skip-slow] [--no-double]
    flock /tmp/tcpsleuth-heavy.lock python3 bench/bench_pcap.py --against /tmp/base/src
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path("/tmp/tcpsleuth-bench")
SNAPLEN = 128
KAFKA_PORT = 9092
SERVER4 = bytes([198, 18, 0, 1])
SERVER6 = bytes.fromhex("20010db8000000000000000000000001")
MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def _tcp(sport: int, dport: int, seq: int, ack: int, flags: int, win: int, opts: bytes) -> bytes:
    hlen = 20 + len(opts)
    return (
        struct.pack(
            ">HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            (hlen // 4) << 4,
            flags,
            win,
            0,
            0,
        )
        + opts
    )


def _packet(v6: bool, client: bytes, c2s: bool, tcp: bytes, paylen: int, payload: bytes) -> bytes:
    src, dst = (client, SERVER6 if v6 else SERVER4) if c2s else (SERVER6 if v6 else SERVER4, client)
    if v6:
        ip = struct.pack(">IHBB", 0x60000000, len(tcp) + paylen, 6, 64) + src + dst
        eth = MAC + b"\x86\xdd"
    else:
        ip = struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(tcp) + paylen, 0, 0x4000, 64, 6, 0)
        ip += src + dst
        eth = MAC + b"\x08\x00"
    return eth + ip + tcp + payload[:paylen]


def _syn_opts(wscale: int, tsval: int, tsecr: int) -> bytes:
    return (
        struct.pack(">BBH", 2, 4, 1460)
        + b"\x04\x02"
        + struct.pack(">BBII", 8, 10, tsval, tsecr)
        + b"\x01"
        + bytes([3, 3, wscale])
    )


def _ts(tsval: int, tsecr: int) -> bytes:
    return b"\x01\x01" + struct.pack(">BBII", 8, 10, tsval, tsecr)


def build(path: Path, target: int, short: int) -> int:
    """Write the capture (``short`` packets of short connections, the rest bulk);
    return its packet count."""
    rng = random.Random(7)
    records: list[bytes] = []
    count = 0
    t_us = 1_700_000_000 * 1_000_000
    out = path.open("wb")
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, 1))

    def emit(frame: bytes, length: int) -> None:
        nonlocal t_us, count
        t_us += 7
        cap = frame[:SNAPLEN]
        records.append(
            struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(cap), length) + cap
        )
        count += 1
        if len(records) >= 65536:
            out.write(b"".join(records))
            records.clear()

    conn = 0
    request = bytearray(2000)
    response = bytearray(2000)
    while count < short:
        v6 = conn % 3 == 0
        client = (
            SERVER6[:15] + bytes([2 + conn % 200]) if v6 else bytes([198, 18, 1, 2 + conn % 200])
        )
        sport = 20000 + (conn // 200) % 30000  # 4-tuples come back after ~6 million packets
        cseq, sseq = rng.getrandbits(32), rng.getrandbits(32)
        ts = rng.getrandbits(31)
        struct.pack_into(">ihhih", request, 0, 296, 0, 7, conn, 0)
        struct.pack_into(">ii", response, 0, 1196, conn)
        hdr = 14 + (40 if v6 else 20)

        def pkt(
            c2s: bool,
            seq: int,
            ack: int,
            flags: int,
            win: int,
            opts: bytes,
            paylen: int,
            payload: bytes = b"",
            v6: bool = v6,
            client: bytes = client,
            sport: int = sport,
            hdr: int = hdr,
        ) -> None:
            sp, dp = (sport, KAFKA_PORT) if c2s else (KAFKA_PORT, sport)
            tcp = _tcp(sp, dp, seq, ack, flags, win, opts)
            emit(_packet(v6, client, c2s, tcp, paylen, payload), hdr + len(tcp) + paylen)

        pkt(True, cseq, 0, 0x02, 64240, _syn_opts(7, ts, 0), 0)
        pkt(False, sseq, cseq + 1, 0x12, 65160, _syn_opts(7, ts + 5, ts), 0)
        pkt(True, cseq + 1, sseq + 1, 0x10, 502, _ts(ts + 1, ts + 5), 0)
        pkt(True, cseq + 1, sseq + 1, 0x18, 502, _ts(ts + 1, ts + 5), 300, request)
        pkt(False, sseq + 1, cseq + 301, 0x10, 507, _ts(ts + 6, ts + 1), 0)
        pkt(False, sseq + 1, cseq + 301, 0x18, 507, _ts(ts + 7, ts + 1), 1200, response)
        pkt(True, cseq + 301, sseq + 1201, 0x10, 500, _ts(ts + 2, ts + 7), 0)
        pkt(True, cseq + 301, sseq + 1201, 0x11, 500, _ts(ts + 3, ts + 7), 0)
        pkt(False, sseq + 1201, cseq + 302, 0x11, 507, _ts(ts + 8, ts + 3), 0)
        pkt(True, cseq + 302, sseq + 1202, 0x10, 500, _ts(ts + 4, ts + 8), 0)
        conn += 1
    streams = 16
    per_stream = (target - count) // streams + 1
    for s in range(streams):
        v6 = s % 2 == 1
        client = SERVER6[:15] + bytes([250]) if v6 else bytes([198, 18, 2, 2])
        sport, dport = 40000 + s, 5001
        hdr = 14 + (40 if v6 else 20)
        cseq, sseq = rng.getrandbits(32), rng.getrandbits(32)
        ts = rng.getrandbits(31)

        def bpkt(
            c2s: bool,
            seq: int,
            ack: int,
            flags: int,
            win: int,
            opts: bytes,
            paylen: int,
            v6: bool = v6,
            client: bytes = client,
            sport: int = sport,
            dport: int = dport,
            hdr: int = hdr,
        ) -> None:
            sp, dp = (sport, dport) if c2s else (dport, sport)
            tcp = _tcp(sp, dp, seq, ack, flags, win, opts)
            emit(_packet(v6, client, c2s, tcp, paylen, bytes(paylen)), hdr + len(tcp) + paylen)

        bpkt(True, cseq, 0, 0x02, 64240, _syn_opts(7, ts, 0), 0)
        bpkt(False, sseq, cseq + 1, 0x12, 65160, _syn_opts(7, ts + 1, ts), 0)
        bpkt(True, cseq + 1, sseq + 1, 0x10, 502, _ts(ts + 1, ts + 1), 0)
        seq = cseq + 1
        for i in range((per_stream - 3) // 2):
            bpkt(True, seq, sseq + 1, 0x10, 502, _ts(ts + i, ts + i), 1448)
            seq += 1448
            bpkt(False, sseq + 1, seq, 0x10, 3000 + (i % 500), _ts(ts + i, ts + i), 0)
    out.write(b"".join(records))
    out.close()
    return count


def timed(label: str, packets: int, func) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    func()
    elapsed = time.perf_counter() - start
    rate = packets / elapsed
    print(f"{label:<48} {elapsed:8.2f} s {rate / 1e3:10.0f} k packets/s", flush=True)
    return rate


def dpkt_connections(path: Path) -> int:
    """The per-connection job in plain Python with dpkt: 4-tuple split on new SYN,
    handshake options, packets, bytes, window range."""
    import dpkt

    conns: dict[tuple, dict] = {}
    done = 0
    with path.open("rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                continue
            tcp = ip.data
            if not isinstance(tcp, dpkt.tcp.TCP):
                continue
            a, b = (ip.src, tcp.sport), (ip.dst, tcp.dport)
            key = (a, b) if a < b else (b, a)
            syn = tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK
            conn = conns.get(key)
            if conn is None or (syn and conn["isn"] != tcp.seq):
                if conn is not None:
                    done += 1
                conn = conns[key] = {
                    "isn": tcp.seq if syn else None,
                    "packets": 0,
                    "bytes": 0,
                    "wmin": 1 << 30,
                    "wmax": 0,
                    "opts": {},
                }
            conn["packets"] += 1
            iplen = ip.len - ip.hl * 4 if isinstance(ip, dpkt.ip.IP) else ip.plen
            conn["bytes"] += max(iplen - tcp.off * 4, 0)
            conn["wmin"] = min(conn["wmin"], tcp.win)
            conn["wmax"] = max(conn["wmax"], tcp.win)
            if tcp.flags & dpkt.tcp.TH_SYN:
                conn["opts"][bool(tcp.flags & dpkt.tcp.TH_ACK)] = dpkt.tcp.parse_opts(tcp.opts)
    return done + len(conns)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(mode: str, path: Path, warmup: Path) -> None:
    """Run one tcpsleuth measurement in this (fresh) process and print it as JSON:
    seconds, CPU seconds (all threads), the peak resident memory during the run and
    the memory before it (Python, NumPy, numba and the compiled loops, warmed up on
    a small capture). The tcpsleuth measured is the one on PYTHONPATH, else this
    checkout's."""
    import json

    if "PYTHONPATH" not in os.environ:
        sys.path.insert(0, str(Path(__file__).parent.parent / "src"))
    from tcpsleuth.cli.pcap import analyse_file
    from tcpsleuth.detectors.capture.run import follow
    from tcpsleuth.sources.pcap import open_capture

    ports = frozenset({KAFKA_PORT})

    def per_connection(file: Path) -> int:
        # the passes that split: reading, decoding, connections (no Kafka port)
        return len(follow(open_capture(file), frozenset())[0].connections)

    def full(file: Path) -> int:
        done = analyse_file(file, ports, show_progress=False)
        # (result, stream) since the result carries facts; the result alone before
        result = done[0] if isinstance(done, tuple) else done
        return len(result.requests)

    run = per_connection if mode == "per-connection" else full
    run(warmup)
    before = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    start, cpu = time.perf_counter(), time.process_time()
    found = run(path)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _rss_kb("VmHWM")
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "cpu": cpu,
                "peak_mb": peak / 1024,
                "before_mb": before / 1024,
                "found": found,
            }
        )
    )


def _env(src: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def measure(mode: str, path: Path, warmup: Path, src: Path | None = None) -> dict:
    """One in-process measurement in a fresh process (of the tcpsleuth in ``src``,
    default this checkout's)."""
    import json

    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path), str(warmup)],
        capture_output=True,
        text=True,
        check=True,
        env=_env(src),
    ).stdout
    return json.loads(out.splitlines()[-1])


LAUNCH = "import sys; from tcpsleuth.cli.main import main; sys.exit(main())"


def whole_process(argv: list[str], src: Path | None = None) -> dict:
    """``tcpsleuth ARGV`` as a user runs it (what the console script runs), output to
    /dev/null: wall seconds and CPU seconds (user + system, all threads)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", LAUNCH, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
        env=_env(src) if src is not None else _env(Path(__file__).parent.parent / "src"),
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": elapsed, "cpu": cpu}


def machine() -> str:
    """CPU model, usable cores and load average: what a figure was measured on."""
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{model}, {len(os.sched_getaffinity(0))} usable cores, load average {load}"


def compare(path: Path, warmup: Path, against: Path, rounds: int) -> None:
    """This checkout against another (``against``: its src/), alternating them
    ``rounds`` times on the same machine in one run; medians, wall and CPU."""
    builds = {"before": against, "after": Path(__file__).parent.parent / "src"}
    cases = ("per-connection", "full", "process")
    found: dict[tuple[str, str], list[dict]] = {}
    print(f"machine: {machine()}", flush=True)
    for src in builds.values():  # compile or load both builds' loops once
        measure("full", warmup, warmup, src)
    for round_ in range(rounds):
        for name, src in builds.items():
            for case in cases:
                if case == "process":
                    result = whole_process(["pcap", str(path)], src)
                else:
                    result = measure(case, path, warmup, src)
                found.setdefault((name, case), []).append(result)
                print(
                    f"round {round_ + 1} {name:<6} {case:<15} {result['seconds']:6.2f} s wall "
                    f"{result['cpu']:6.2f} s CPU",
                    flush=True,
                )
    print(f"\nmedians of {rounds} rounds, machine: {machine()}")
    labels = {
        "per-connection": "split passes (read, decode, connections)",
        "full": "full analysis (in process)",
        "process": f"tcpsleuth pcap {path.name} (whole process)",
    }
    for case in cases:
        wall = {n: statistics.median(r["seconds"] for r in found[(n, case)]) for n in builds}
        cpu = {n: statistics.median(r["cpu"] for r in found[(n, case)]) for n in builds}
        print(
            f"{labels[case]:<52} before {wall['before']:5.2f} s ({cpu['before']:5.2f} CPU)  "
            f"after {wall['after']:5.2f} s ({cpu['after']:5.2f} CPU)  "
            f"{wall['before'] / wall['after']:4.2f}x faster"
        )


def capture(packets: int, short: int) -> Path:
    CACHE.mkdir(exist_ok=True)
    path = CACHE / (
        f"bench-{packets}.pcap"
        if short == packets - packets // 5
        else f"bench-{packets}-{short}.pcap"
    )
    if not path.exists():
        start = time.perf_counter()
        n = build(path, packets, short)
        print(f"built {path} ({n} packets) in {time.perf_counter() - start:.1f} s", flush=True)
    return path


def count_packets(path: Path) -> int:
    with path.open("rb") as f:
        f.seek(24)
        data = f.read()
    pos = n = 0
    while pos + 16 <= len(data):
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--skip-slow", action="store_true", help="tcpsleuth only")
    parser.add_argument(
        "--no-double", action="store_true", help="skip the capture with twice the packets"
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="the src/ of another checkout (e.g. a git worktree of the commit before a "
        "change): time both, alternating, and print medians and the speed-up",
    )
    parser.add_argument("--rounds", type=int, default=5, help="with --against")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    short = args.packets - args.packets // 5
    path = capture(args.packets, short)
    warmup = capture(50_000, 40_000)
    if args.against:
        compare(path, warmup, args.against.resolve(), args.rounds)
        return
    packets = count_packets(path)
    size = path.stat().st_size
    print(f"capture: {path}, {packets} packets, {size / 1e6:.0f} MB", flush=True)
    print(f"machine: {machine()}", flush=True)

    rates: dict[str, float] = {}
    rates["read file"] = timed("read the file into memory", packets, path.read_bytes)
    memory: dict[str, dict] = {}
    for mode, label in (
        ("per-connection", "tcpsleuth per-connection pass"),
        ("full", "tcpsleuth full analysis (+ Kafka, cookies, ...)"),
    ):
        result = measure(mode, path, warmup)
        rates[f"tcpsleuth {mode}"] = packets / result["seconds"]
        memory[f"{mode} {packets}"] = result
        print(
            f"{label:<48} {result['seconds']:8.2f} s {packets / result['seconds'] / 1e3:10.0f} "
            f"k packets/s   {result['cpu']:.2f} s CPU   peak {result['peak_mb']:5.0f} MB "
            f"({result['before_mb']:.0f} MB before it)",
            flush=True,
        )
    result = whole_process(["pcap", str(path)])
    print(
        f"{'tcpsleuth pcap (whole process, table)':<48} {result['seconds']:8.2f} s "
        f"{packets / result['seconds'] / 1e3:10.0f} k packets/s   {result['cpu']:.2f} s CPU",
        flush=True,
    )
    if not args.no_double:
        # the same short connections, twice the packets (longer bulk streams)
        double = capture(2 * args.packets, short)
        doubled = count_packets(double)
        print(f"capture: {double}, {doubled} packets, same short connections", flush=True)
        for mode in ("per-connection", "full"):
            result = measure(mode, double, warmup)
            memory[f"{mode} {doubled}"] = result
            print(
                f"tcpsleuth {mode:<38} {result['seconds']:8.2f} s "
                f"{doubled / result['seconds'] / 1e3:10.0f} k packets/s   peak "
                f"{result['peak_mb']:5.0f} MB ({result['before_mb']:.0f} MB before it)",
                flush=True,
            )
    if not args.skip_slow:
        fields = [
            "frame.time_epoch",
            "ip.src",
            "ipv6.src",
            "tcp.srcport",
            "ip.dst",
            "ipv6.dst",
            "tcp.dstport",
            "tcp.seq_raw",
            "tcp.ack_raw",
            "tcp.flags",
            "tcp.window_size_value",
            "tcp.len",
            "tcp.options.mss_val",
            "tcp.options.wscale.shift",
            "tcp.options.sack_perm",
            "tcp.options.timestamp.tsval",
        ]
        argv = ["tshark", "-n", "-r", str(path), "-T", "fields"]
        for field in fields:
            argv += ["-e", field]
        rates["tshark -T fields"] = timed(
            "tshark -T fields (same per-packet fields)",
            packets,
            lambda: subprocess.run(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
            ),
        )
        rates["tshark conv"] = timed(
            "tshark -q -z conv,tcp",
            packets,
            lambda: subprocess.run(
                ["tshark", "-n", "-q", "-r", str(path), "-z", "conv,tcp"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            ),
        )
        rates["dpkt"] = timed("dpkt per-connection job", packets, lambda: dpkt_connections(path))
    print()
    for name in ("tshark -T fields", "tshark conv", "dpkt"):
        if name in rates:
            per_conn = rates["tcpsleuth per-connection"] / rates[name]
            full_ratio = rates["tcpsleuth full"] / rates[name]
            print(f"tcpsleuth per-connection / {name}: {per_conn:.1f}x;", end="")
            print(f"  full / {name}: {full_ratio:.1f}x")
    print(
        f"read-into-memory / tcpsleuth per-connection: "
        f"{rates['read file'] / rates['tcpsleuth per-connection']:.1f}x"
    )


if __name__ == "__main__":
    main()
