"""A stock-kernel VM restored from build/stock/net-snapshot on a simulated host, driven
through its console: the helper of scripts/bench-io.sh and the key/value rows of
scripts/bench.sh (sourced by their Python parts, not run)."""

import os
import shutil
import subprocess
import threading
import time

SNAP = "build/stock/net-snapshot"
GUEST = "10.77.0.100"


class StockVm:
    """`ftvm MODE --restore` of the net snapshot on HOSTS's host A, with its own disk
    copies in WORK; `run(cmd)` types one line and waits for it to finish."""

    def __init__(self, ftvm, hosts, command, work, host="a", restore=True):
        """COMMAND: ftvm's subcommand and its own flags (["run"], ["record", "--log",
        F], ["primary", ...]); the snapshot (unless RESTORE is false: a backup), the NIC
        on the host's tap0 and copies of the disks are added."""
        os.makedirs(work, exist_ok=True)
        self.data = os.path.join(work, "data.img")
        shutil.copyfile(os.path.join(SNAP, "data.img"), self.data)
        ro = os.path.join(work, "ro.img")
        shutil.copyfile(os.path.join(SNAP, "ro.img"), ro)
        args = ["ip", "netns", "exec", f"{hosts}-{host}", ftvm, *command]
        if restore:
            args += ["--restore", os.path.join(SNAP, "snap")]
        args += ["--net", "tap=tap0", "--disk", self.data, "--disk", ro + ",readonly"]
        self.err_path = os.path.join(work, "ftvm.err")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.err_path, "wb"),
        )
        self.out = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.steps = 0

    def _read(self):
        while True:
            chunk = self.proc.stdout.read1(4096)
            if not chunk:
                return
            with self.lock:
                self.out += chunk

    def text(self):
        with self.lock:
            return self.out.decode(errors="replace").replace("\r\n", "\n")

    def run(self, cmd, limit=600):
        """Type CMD; return (seconds from typing to its end, what it printed)."""
        # At the prompt only: a line typed before the shell reads (right after a restore,
        # say) can be lost in this guest (seen once in 7 restores).
        t = time.time()
        while not self.text().endswith("# "):
            if self.proc.poll() is not None:
                raise RuntimeError(f"ftvm exited: {open(self.err_path).read()[-2000:]}")
            if time.time() - t > limit:
                raise RuntimeError(f"no prompt in {limit} s; console:\n{self.text()[-3000:]}")
            time.sleep(0.005)
        self.steps += 1
        marker = f"bench-step-{self.steps}-done"
        start = len(self.text())
        t = time.time()
        self.proc.stdin.write(f"{cmd}; echo {marker}\n".encode())
        self.proc.stdin.flush()
        while True:
            lines = self.text()[start:].split("\n")
            if any(l.removeprefix("# ").strip() == marker for l in lines):
                took = time.time() - t
                return took, "\n".join(l for l in lines if marker not in l)
            if self.proc.poll() is not None:
                raise RuntimeError(f"ftvm exited: {open(self.err_path).read()[-2000:]}")
            if time.time() - t > limit:
                raise RuntimeError(f"'{cmd}' did not finish in {limit} s; console:\n{self.text()[-3000:]}")
            time.sleep(0.005)

    def exit(self, status=0, limit=300):
        self.proc.stdin.write(f"exit {status}\n".encode())
        self.proc.stdin.flush()
        self.proc.wait(timeout=limit)
        return self.proc.returncode

    def stderr(self):
        return open(self.err_path, errors="replace").read()

    def wait_err(self, text, limit=300):
        """Until ftvm's stderr contains TEXT."""
        t = time.time()
        while text not in self.stderr():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ftvm exited before '{text}': {self.stderr()[-2000:]}")
            if time.time() - t > limit:
                raise RuntimeError(f"no '{text}' within {limit} s: {self.stderr()[-2000:]}")
            time.sleep(0.02)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def on_client(hosts, argv, limit=600, **kw):
    """Run ARGV on the client host; its CompletedProcess."""
    return subprocess.run(
        ["ip", "netns", "exec", f"{hosts}-client", *argv],
        capture_output=True,
        text=True,
        timeout=limit,
        **kw,
    )
