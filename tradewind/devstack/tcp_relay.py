"""A TCP relay: accepts on one address and copies each connection's bytes to the same port on
another (127.0.0.1 by default). The dev stack's servers listen on 127.0.0.1 only; a relay on a
pod network's bridge address makes them reachable from the pods there (the real node's
apiserver, MinIO and MLflow: node_relay.py).

As a process of its own: `python -m tradewind.devstack.tcp_relay --listen HOST --port PORT
[--port PORT ...]` relays until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import threading


class Forwarder:
    """Accepts on (listen_host, port) and relays each connection to (target_host, port)."""

    def __init__(self, listen_host: str, port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, port)
        self.server = socket.create_server((listen_host, port), reuse_port=False)
        self.server.settimeout(0.5)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True, name=f"fwd-{port}")
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()  # what a client of a stopped server sees: the connection drops
            return
        upstream.settimeout(None)
        client.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        other = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        other.start()
        pump(client, upstream)
        other.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        self.closed.set()
        self.server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tradewind.devstack.tcp_relay")
    parser.add_argument("--listen", required=True, help="address to accept on")
    parser.add_argument(
        "--port", type=int, action="append", required=True, help="port, on both sides (repeat)"
    )
    parser.add_argument("--target", default="127.0.0.1", help="address to relay to")
    args = parser.parse_args(argv)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    forwarders = [Forwarder(args.listen, port, args.target) for port in args.port]
    for port in args.port:
        print(f"relaying {args.listen}:{port} -> {args.target}:{port}", flush=True)
    stopped.wait()
    for forwarder in forwarders:
        forwarder.close()


if __name__ == "__main__":
    main()
