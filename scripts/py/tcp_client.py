"""The client host's end of a TCP throughput measurement (scripts/bench-io.sh).

  tcp_client.py send HOST PORT BYTES   connect (retrying for a minute), send BYTES,
                                       half-close, wait for the peer's close
  tcp_client.py receive PORT BYTES     accept one connection, read BYTES, close

Prints `bytes N seconds S`: the time from the connection to the last byte (send: to the
peer's close, so the bytes were all taken)."""

import socket
import sys
import time


def main():
    mode = sys.argv[1]
    if mode == "send":
        host, port, total = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        deadline = time.time() + 60
        while True:
            try:
                s = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        s.settimeout(300)
        t = time.time()
        block = b"\xa5" * 65536
        left = total
        while left > 0:
            n = s.send(block[: min(left, len(block))])
            left -= n
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
        took = time.time() - t
    else:
        port, total = int(sys.argv[2]), int(sys.argv[3])
        l = socket.socket()
        l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(("0.0.0.0", port))
        l.listen(1)
        l.settimeout(120)
        c, _ = l.accept()
        c.settimeout(300)
        t = time.time()
        got = 0
        while got < total:
            chunk = c.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        took = time.time() - t
        c.close()
        total = got
    print(f"bytes {total} seconds {took:.4f}")


main()
