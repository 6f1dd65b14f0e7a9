#!/usr/bin/env python3
"""Build an uncompressed newc cpio initramfs (uncompressed: on hosts whose KVM emulates
kernel mode, inflating it in the guest costs more than reading the larger file): busybox with its applet links, an /init, and
optional extra static binaries in /bin, and optional kernel modules in /lib/modules/ftvm
with a `load-order` file (dependencies first, from each module's `depends=`) that /init
follows with insmod. Written in Python so no cpio tool is needed;
timestamps are fixed so the same inputs give the same image.

Modules go in without their appended signatures: the kernel checks a signature with a
SHA-256 of the whole module and an RSA verification, which in the emulated kernel mode of
these hosts took about a tenth of the stock boot (its profile, 2026-12-02). This kernel
does not require signatures (CONFIG_MODULE_SIG_FORCE unset); it loads the module, says
"module verification failed" once and marks itself tainted (E). The module's code and
data are the package's, byte for byte."""
import argparse, io, os, stat, struct

SIGNATURE_MAGIC = b"~Module signature appended~\n"

APPLETS = ["sh", "mount", "umount", "echo", "cat", "ls", "mkdir", "sleep", "poweroff",
           "reboot", "halt", "devmem", "dmesg", "uname", "date", "seq", "true", "false",
           "grep", "head", "tail", "wc", "ps", "kill", "ip", "ifconfig", "hostname", "env",
           "printf", "test", "[", "sync", "cut", "tr", "od", "hexdump", "md5sum", "sed",
           "insmod", "rm", "cp", "dd", "sha256sum", "df"]

def module_depends(data):
    """The `depends=` list of a module's .modinfo section."""
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    value = data[at + 9:data.index(b"\0", at + 9)].decode()
    return [d for d in value.split(",") if d]

def without_signature(data, name):
    """The module without its appended signature (the module as built), if it has one.
    The trailer is the signature, then a 12-byte struct module_signature whose last field
    is the signature's length (big-endian), then the magic string."""
    if not data.endswith(SIGNATURE_MAGIC):
        return data
    info_end = len(data) - len(SIGNATURE_MAGIC)
    if info_end < 12:
        raise SystemExit(f"module {name}: signature trailer too short")
    (sig_len,) = struct.unpack(">I", data[info_end - 4:info_end])
    body_end = info_end - 12 - sig_len
    if body_end <= 0:
        raise SystemExit(f"module {name}: signature length {sig_len} exceeds the file")
    return data[:body_end]

def load_order(mods):
    """Module names (file stems) ordered so that each comes after what it depends on."""
    order, seen = [], set()
    def visit(name, path):
        if name in seen:
            return
        if name in path:
            raise SystemExit(f"module dependency loop at {name}")
        for dep in mods[name]:
            if dep not in mods:
                raise SystemExit(f"module {name} needs {dep}, which is not given")
            visit(dep, path + [name])
        seen.add(name)
        order.append(name)
    for name in sorted(mods):
        visit(name, [])
    return order

class Cpio:
    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def add(self, name, mode, data=b"", rdev=(0, 0)):
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in [
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0])
        self.ino += 1
        self.buf.write(hdr.encode() + name_b)
        self.buf.write(b"\0" * (-(110 + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def finish(self):
        self.add("TRAILER!!!", 0)
        return self.buf.getvalue()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--busybox", required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--bin-dir")
    ap.add_argument("--module", action="append", default=[], help="a kernel module (.ko) to load at boot")
    ap.add_argument("--output", required=True)
    a = ap.parse_args()
    c = Cpio()
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "root", "mnt"]:
        c.add(d, stat.S_IFDIR | 0o755)
    # The kernel opens /dev/console for init before devtmpfs is mounted: it must exist.
    c.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    c.add("bin/busybox", stat.S_IFREG | 0o755, open(a.busybox, "rb").read())
    for applet in APPLETS:
        c.add(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox")
    c.add("init", stat.S_IFREG | 0o755, open(a.init, "rb").read())
    if a.bin_dir:
        for f in sorted(os.listdir(a.bin_dir)):
            c.add(f"bin/{f}", stat.S_IFREG | 0o755, open(os.path.join(a.bin_dir, f), "rb").read())
    if a.module:
        mods, blobs = {}, {}
        for path in a.module:
            name = os.path.basename(path)[:-len(".ko")].replace("-", "_")
            blobs[name] = without_signature(open(path, "rb").read(), name)
            mods[name] = module_depends(blobs[name])
        for d in ["lib", "lib/modules", "lib/modules/ftvm"]:
            c.add(d, stat.S_IFDIR | 0o755)
        order = load_order(mods)
        for name in order:
            c.add(f"lib/modules/ftvm/{name}.ko", stat.S_IFREG | 0o644, blobs[name])
        c.add("lib/modules/ftvm/load-order", stat.S_IFREG | 0o644, ("\n".join(order) + "\n").encode())
    with open(a.output, "wb") as f:
        f.write(c.finish())

if __name__ == "__main__":
    main()
