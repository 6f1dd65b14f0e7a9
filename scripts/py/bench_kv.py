"""scripts/bench-kv.sh's measurements (row (c) of the benchmark): the key/value service in
the stock guest, restored from its net snapshot, serving `kvclient bench` from the client
host, under `run` (host A alone) and under a primary on host A with its backup on host B;
rounds interleaved. Prints one table of medians and pair/run ratios."""

import json
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from stockvm import GUEST, StockVm, on_client  # noqa: E402

ftvm, kvclient, hosts, work, rounds, ops = sys.argv[1:7]
rounds, ops = int(rounds), int(ops)
shared = f"/tmp/{hosts}/shared"


def bench(tag):
    # Calls take seconds through the guest's emulated kernel (and, under the pair, its
    # replies wait for the backup): 20 s per call before a retry.
    p = on_client(hosts, [kvclient, "--vs", f"{GUEST}:7000", "--rpc-timeout-ms", "20000", "bench", "--tag", tag, "--count", str(ops)])
    m = re.search(r"seconds ([0-9.]+) ops_per_s ([0-9.]+) p50_ms ([0-9.]+) p99_ms ([0-9.]+)", p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"kvclient bench: {p.stdout}{p.stderr}")
    return {"seconds": float(m.group(1)), "ops_s": float(m.group(2)), "p50_ms": float(m.group(3)),
            "p99_ms": float(m.group(4))}


def warm():
    # The service's view settles after the restore: one put until it answers.
    p = on_client(hosts, [kvclient, "--vs", f"{GUEST}:7000", "--timeout-ms", "120000",
                          "--rpc-timeout-ms", "20000", "put", "warm", "up"])
    if p.returncode != 0:
        raise RuntimeError(f"kvclient put: {p.stdout}{p.stderr}")


def status_json():
    p = subprocess.run([ftvm, "status", "--shared-dir", shared, "--name", "kv", "--json"],
                       capture_output=True, text=True, timeout=30)
    return json.loads(p.stdout)


def primary_status():
    reports = [r for r in status_json()["vmms"] if r.get("role", "").startswith("primary")]
    if not reports:
        raise RuntimeError("ftvm status shows no primary")
    return reports[0]


def one(mode, n):
    d = os.path.join(work, f"{mode}-{n}")
    if mode == "run":
        vm = StockVm(ftvm, hosts, ["run"], d)
        try:
            vm.run("echo ready")
            warm()
            r = bench(f"r{n}")
            vm.exit(0)
            return r
        finally:
            vm.kill()
    key = os.path.join(d, "pair.key")
    os.makedirs(d, exist_ok=True)
    subprocess.run([ftvm, "keygen", key], check=True, capture_output=True)
    common = ["--shared-dir", shared, "--name", "kv", "--key-file", key]
    primary = StockVm(ftvm, hosts, ["primary", "--listen", "10.77.0.1:7000", *common], os.path.join(d, "a"))
    backup = None
    try:
        primary.wait_err("waiting for a backup", 120)
        backup = StockVm(ftvm, hosts, ["backup", "--primary", "10.77.0.1:7000", *common],
                         os.path.join(d, "b"), host="b", restore=False)
        primary.wait_err("protected:", 600)
        warm()
        before = primary_status()
        r = bench(f"p{n}")
        after = primary_status()
        logged = after["log_bytes"] - before["log_bytes"]
        r["log_bytes_per_op"] = logged / ops
        r["log_mbit_s"] = logged * 8 / 1e6 / r["seconds"]
        # The output rule's hold time of the guest's frames during the run, as the primary
        # reports it: from the guest's transmit to the backup's acknowledgement.
        held = after["frames_held_released"] - before["frames_held_released"]
        held_s = after["frames_hold_sum_s"] - before["frames_hold_sum_s"]
        r["frame_hold_avg_ms"] = held_s * 1e3 / held if held else 0.0
        r["frame_hold_max_ms"] = after["frames_hold_max_ms"]
        return r
    finally:
        primary.kill()
        if backup:
            backup.kill()
        for f in os.listdir(shared):
            os.remove(os.path.join(shared, f))


results = {"run": [], "pair": []}
for n in range(rounds):
    for mode in ("run", "pair"):
        r = one(mode, n)
        print(f"[ftvm] round {n + 1} {mode}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), file=sys.stderr)
        results[mode].append(r)

print(f"{'medians of ' + str(rounds) + ' rounds, ' + str(ops) + ' ops':36} {'run':>10} {'pair':>10} {'pair/run':>9}")
for name, key in [("operations per second", "ops_s"), ("latency p50 (ms)", "p50_ms"), ("latency p99 (ms)", "p99_ms")]:
    a = statistics.median(r[key] for r in results["run"])
    b = statistics.median(r[key] for r in results["pair"])
    print(f"{name:36} {a:10.2f} {b:10.2f} {b / a:9.2f}")
for name, key in [("log bytes per operation", "log_bytes_per_op"), ("log bandwidth under load (Mbit/s)", "log_mbit_s"),
                  ("frames' output-rule hold mean (ms)", "frame_hold_avg_ms"),
                  ("frames' output-rule hold max (ms)", "frame_hold_max_ms")]:
    print(f"{name:36} {'':>10} {statistics.median(r[key] for r in results['pair']):10.1f}")
