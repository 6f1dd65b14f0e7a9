"""scripts/bench-io.sh's measurements: the stock guest restored from its net snapshot on
host A, under `run` and under `record`, rounds interleaved; prints one table of medians
and the record/run ratios."""

import os
import re
import statistics
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
from stockvm import GUEST, StockVm, on_client  # noqa: E402

ftvm, hosts, work, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
HERE = os.path.dirname(os.path.abspath(__file__))
TCP_BYTES = 1 << 20
DISK_MIB = 4


def seconds(out):
    m = re.search(r"bytes (\d+) seconds ([0-9.]+)", out)
    if not m or int(m.group(1)) == 0:
        raise RuntimeError(f"client: {out}")
    return int(m.group(1)), float(m.group(2))


def one(mode, n):
    d = os.path.join(work, f"{mode}-{n}")
    command = ["run"] if mode == "run" else ["record", "--log", os.path.join(d, "vm.log")]
    vm = StockVm(ftvm, hosts, command, d)
    try:
        vm.run("echo ready")
        r = {}
        p = on_client(hosts, ["ping", "-q", "-c", "10", "-i", "0.2", "-W", "10", GUEST])
        m = re.search(r"= [0-9.]+/([0-9.]+)/", p.stdout)
        if p.returncode != 0 or not m:
            raise RuntimeError(f"ping: {p.stdout}{p.stderr}")
        r["ping_ms"] = float(m.group(1))

        # Host to guest: the guest's nc takes the bytes and closes at their end.
        res = {}
        t = threading.Thread(
            target=lambda: res.update(
                out=on_client(hosts, ["python3", f"{HERE}/tcp_client.py", "send", GUEST, "5001", str(TCP_BYTES)])
            )
        )
        t.start()
        vm.run("nc -l -p 5001 </dev/null >/dev/null")
        t.join()
        b, s = seconds(res["out"].stdout + res["out"].stderr)
        r["tcp_in_mbit"] = b * 8 / s / 1e6

        # Guest to host: zeros from the guest's dd through its nc.
        t = threading.Thread(
            target=lambda: res.update(
                out=on_client(hosts, ["python3", f"{HERE}/tcp_client.py", "receive", "5002", str(TCP_BYTES)])
            )
        )
        t.start()
        import time as _t

        _t.sleep(0.3)
        vm.run(f"dd if=/dev/zero bs=65536 count={TCP_BYTES // 65536} 2>/dev/null | nc 10.77.0.10 5002 >/dev/null")
        t.join()
        b, s = seconds(res["out"].stdout + res["out"].stderr)
        r["tcp_out_mbit"] = b * 8 / s / 1e6

        took, _ = vm.run(f"dd if=/dev/zero of=/mnt/bench bs=1048576 count={DISK_MIB} conv=fsync 2>/dev/null")
        r["disk_write_mib_s"] = DISK_MIB / took
        vm.run("echo 3 >/proc/sys/vm/drop_caches")
        took, _ = vm.run("dd if=/mnt/bench of=/dev/null bs=1048576 2>/dev/null")
        r["disk_read_mib_s"] = DISK_MIB / took
        vm.exit(0)
        if mode == "record":
            r["log_mb"] = os.path.getsize(os.path.join(work, f"{mode}-{n}", "vm.log")) / 1e6
        return r
    finally:
        vm.kill()


results = {"run": [], "record": []}
for n in range(rounds):
    for mode in ("run", "record"):
        r = one(mode, n)
        print(f"[ftvm] round {n + 1} {mode}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), file=sys.stderr)
        results[mode].append(r)

rows = [
    ("ping round trip (ms)", "ping_ms"),
    ("TCP host to guest (Mbit/s)", "tcp_in_mbit"),
    ("TCP guest to host (Mbit/s)", "tcp_out_mbit"),
    ("disk write, fsync (MiB/s)", "disk_write_mib_s"),
    ("disk read, cold cache (MiB/s)", "disk_read_mib_s"),
]
print(f"{'medians of ' + str(rounds) + ' rounds':32} {'run':>10} {'record':>10} {'record/run':>11}")
for name, key in rows:
    a = statistics.median(r[key] for r in results["run"])
    b = statistics.median(r[key] for r in results["record"])
    print(f"{name:32} {a:10.2f} {b:10.2f} {b / a:11.2f}")
log = statistics.median(r["log_mb"] for r in results["record"])
print(f"{'log per recorded round (MB)':32} {'':>10} {log:10.1f}")
