"""The socket `serve --workers N` shares is a TCP socket by protocol, so asyncio sets TCP_NODELAY
on every connection it accepts (uvicorn's own left the protocol 0: 40 ms per response, waiting
for the client's delayed ACK)."""

from __future__ import annotations

import socket

from tenant_mcp.transports.http import _tcp_socket


def test_the_shared_socket_is_tcp_and_its_connections_get_nodelay() -> None:
    sock = _tcp_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.get_inheritable()
        sock.listen()
        client = socket.create_connection(sock.getsockname())
        accepted, _ = sock.accept()
        try:
            assert accepted.proto == socket.IPPROTO_TCP  # what asyncio checks before setting TCP_NODELAY
        finally:
            accepted.close()
            client.close()
    finally:
        sock.close()
