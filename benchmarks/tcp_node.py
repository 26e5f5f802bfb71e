"""A TCP benchmark server in its own process: our overlay node, or plain kernel TCP.

``python3 benchmarks/tcp_node.py overlay --peer-key B64 --peer-port P`` runs a node
(DataPlane + ThreadedDataPlane + UdpTransport on 127.0.0.1 + OverlayNetwork 10.77.0.2) whose
one peer is the benchmark process's node (10.77.0.1); ``kernel`` listens on 127.0.0.1
instead. It prints one JSON line (``{"port": TCP port, "udp": UDP port, "key": public
key}``) and serves connections, each starting with one command byte:

    S  sink: read to end of stream, answer b"%d" % bytes_read, close
    E  echo: answer every MSG-byte message (MSG = 1024) until end of stream
    C  close at once (connection setup rate)
    I  idle: keep the connection open until the client closes it

It exits when stdin closes (the benchmark died or finished): no orphan process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MSG = 1024
OVERLAY_SERVER, OVERLAY_CLIENT = "10.77.0.2", "10.77.0.1"
TCP_PORT = 5201


def handle(conn, drop) -> None:
    try:
        cmd = conn.recv(1)
        if cmd == b"S":
            buf = bytearray(1 << 20)
            total = 0
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                total += n
            conn.sendall(b"%d" % total)
        elif cmd == b"E":
            buf = bytearray(MSG)
            view = memoryview(buf)
            while True:
                got = 0
                while got < MSG:
                    n = conn.recv_into(view[got:])
                    if not n:
                        return
                    got += n
                conn.sendall(buf)
        elif cmd == b"I":
            conn.recv(1)
    except OSError:
        pass
    finally:
        conn.close()
        drop()


def serve(listener) -> None:
    live = set()
    lock = threading.Lock()
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        t = threading.Thread(target=handle, args=(conn, lambda: None), daemon=True)
        with lock:
            live.add(t)
        t.start()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["overlay", "kernel"])
    ap.add_argument("--peer-key")
    ap.add_argument("--peer-port", type=int)
    ap.add_argument("--key")
    args = ap.parse_args()
    info: dict[str, object] = {"pid": os.getpid()}
    if args.mode == "kernel":
        listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        info["port"] = listener.getsockname()[1]
    else:
        from dataplane import DataPlane, PrivateKey, PublicKey, ThreadedDataPlane
        from dataplane.netstack import OverlayNetwork
        from dataplane.transport.udp import UdpTransport

        key = PrivateKey.from_base64(args.key) if args.key else PrivateKey.generate()
        driver = ThreadedDataPlane(DataPlane(key), name="server").start()
        udp = UdpTransport(driver, ("127.0.0.1", 0))
        net = OverlayNetwork(driver, [OVERLAY_SERVER], name="srv")
        with driver.locked() as core:
            core.set_addresses([OVERLAY_SERVER], overlay=net.id)
            core.add_peer(
                PublicKey.from_base64(args.peer_key),
                allowed_ips=[OVERLAY_CLIENT + "/32"],
                endpoint=("127.0.0.1", args.peer_port),
                underlay=udp.id,
            )
        listener = net.create_server(("", TCP_PORT), backlog=1024)
        info.update(port=TCP_PORT, udp=udp.socket.sock.getsockname()[1])
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    print(json.dumps(info), flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    os._exit(0)


if __name__ == "__main__":
    main()
