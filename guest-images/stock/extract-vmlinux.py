#!/usr/bin/env python3
"""Extract the ELF vmlinux from a bzImage: the x86 boot protocol's setup header says where
the compressed payload is; its magic says how it is compressed."""
import gzip, lzma, struct, subprocess, sys

def main(src, dst):
    data = open(src, "rb").read()
    if data[0x202:0x206] != b"HdrS":
        sys.exit(f"{src}: not a bzImage (no HdrS header)")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start:start + payload_length]
    if payload[:2] == b"\x1f\x8b":
        out = gzip.decompress(payload)
    elif payload[:6] == b"\xfd7zXZ\x00":
        out = lzma.decompress(payload, format=lzma.FORMAT_XZ)
    elif payload[:3] == b"\x5d\x00\x00":
        out = lzma.decompress(payload, format=lzma.FORMAT_ALONE)
    elif payload[:4] == b"\x02\x21\x4c\x18":  # LZ4 legacy frame (Debian's choice)
        # The kernel's build appends the uncompressed size (4 bytes), which lz4 rejects.
        out = subprocess.run(["lz4", "-dc"], input=payload[:-4], capture_output=True, check=True).stdout
    elif payload[:4] == b"\x28\xb5\x2f\xfd":
        out = subprocess.run(["zstd", "-dc"], input=payload, capture_output=True, check=True).stdout
    else:
        sys.exit(f"{src}: unknown payload compression {payload[:6].hex()}")
    if out[:4] != b"\x7fELF":
        sys.exit(f"{src}: decompressed payload is not an ELF")
    open(dst, "wb").write(out)

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: extract-vmlinux.py BZIMAGE OUTPUT")
    main(sys.argv[1], sys.argv[2])
