"""One TCP connection from the guest node to a port on this machine's loopback, for qemu's user-mode network.

qemu runs this for every connection the guest opens to a `guestfwd` address (`-netdev user,guestfwd=...-cmd:...`)
with the connection on its standard input and output, so the guest's kubelet and pods reach the API server without
any network besides qemu's own. Standard library only and nothing printed: it starts once per connection, and
whatever it wrote to stderr would land in the guest's stream.

    python -S tests/support/relay.py PORT
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

CHUNK = 1 << 16


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(port: int, guest_in: int = 0, guest_out: int = 1) -> None:
    host = socket.create_connection(("127.0.0.1", port))
    sel = selectors.DefaultSelector()
    sel.register(guest_in, selectors.EVENT_READ, "guest")
    sel.register(host, selectors.EVENT_READ, "host")
    open_ends = 2
    while open_ends:
        for key, _ in sel.select():
            if key.data == "guest":
                data = os.read(guest_in, CHUNK)
                if data:
                    host.sendall(data)
                    continue
                host.shutdown(socket.SHUT_WR)
            else:
                data = host.recv(CHUNK)
                if data:
                    _write_all(guest_out, data)
                    continue
                try:
                    socket.socket(fileno=os.dup(guest_out)).shutdown(socket.SHUT_WR)
                except OSError:  # not a socket: closing is all there is
                    os.close(guest_out)
            sel.unregister(key.fileobj)
            open_ends -= 1


if __name__ == "__main__":
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    try:
        relay(int(sys.argv[1]))
    except OSError:
        sys.exit(1)
