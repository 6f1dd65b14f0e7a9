"""scripts/demo-pair.sh: the mission's story on one machine. The stock guest (restored
from its net snapshot) runs under a primary on host A and a backup on host B; the
key/value service in it serves three clients on the client host; host A loses power
(its cable is cut, then its VMM killed); the backup goes live and the clients carry on.
Prints what happens as it happens and checks every append landed exactly once."""

import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from stockvm import GUEST, StockVm, on_client  # noqa: E402

ftvm, kvclient, hosts, work = sys.argv[1:5]
shared = f"/tmp/{hosts}/shared"
APPENDS = 10
TAGS = ["alice", "bob", "carol"]


def say(text):
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def status():
    p = subprocess.run([ftvm, "status", "--shared-dir", shared, "--name", "kv"],
                       capture_output=True, text=True, timeout=30)
    for line in (p.stdout + p.stderr).splitlines():
        print("    " + line)


key = os.path.join(work, "pair.key")
subprocess.run([ftvm, "keygen", key], check=True, capture_output=True)
common = ["--shared-dir", shared, "--name", "kv", "--key-file", key, "--peer-timeout", "1000"]
say("host A: ftvm primary, the stock guest restored from its snapshot (NIC on A's tap0)")
primary = StockVm(ftvm, hosts, ["primary", "--listen", "10.77.0.1:7000", *common], os.path.join(work, "a"))
primary.wait_err("waiting for a backup", 120)
say("host B: ftvm backup joins over the LAN (state transfer of memory and disks)")
backup = StockVm(ftvm, hosts, ["backup", "--primary", "10.77.0.1:7000", *common],
                 os.path.join(work, "b"), host="b", restore=False)
try:
    primary.wait_err("protected:", 600)
    say("protected; ftvm status:")
    status()
    say(f"client host: {len(TAGS)} clients append {APPENDS} entries each to key 'log'")
    outs = {}

    def client(tag):
        # A call through the guest's emulated kernel, its reply held until the backup has
        # replayed it, takes seconds here: 20 s per call, retried until done.
        outs[tag] = on_client(hosts, [kvclient, "--vs", f"{GUEST}:7000", "--timeout-ms", "0",
                                      "--rpc-timeout-ms", "20000",
                                      "append-many", "--key", "log", "--tag", tag,
                                      "--count", str(APPENDS), "--progress"], limit=900)

    threads = [threading.Thread(target=client, args=(t,)) for t in TAGS]
    for t in threads:
        t.start()
    time.sleep(20)
    say("pulling host A's power: its cable is cut, then its VMM killed")
    subprocess.run(["scripts/hosts.sh", "cut", "a", hosts], check=True, capture_output=True)
    primary.kill()
    t = time.time()
    backup.wait_err("live at exit", 300)
    say(f"host B is live {time.time() - t:.1f} s after the power went:")
    for line in backup.stderr().splitlines():
        if "won epoch" in line or "live at exit" in line:
            print("    " + line)
    for t in threads:
        t.join()
    for tag in TAGS:
        last = [l for l in outs[tag].stdout.splitlines() if l.strip()][-1:]
        say(f"client {tag}: {'; '.join(last) or outs[tag].stderr.strip()}")
    value = on_client(hosts, [kvclient, "--vs", f"{GUEST}:7000", "--timeout-ms", "120000",
                              "--rpc-timeout-ms", "20000", "get", "log"]).stdout.strip()
    ok = True
    for tag in TAGS:
        mine = [e for e in value.split(";") if e.split(".")[0] == tag]
        want = [f"{tag}.{i}" for i in range(APPENDS)]
        good = mine == want
        ok &= good
        say(f"{tag}'s {APPENDS} appends in the store: {'each exactly once, in order' if good else 'WRONG: ' + ','.join(mine)}")
    say("ftvm status after the failover:")
    status()
    sys.exit(0 if ok else 1)
finally:
    primary.kill()
    backup.kill()
