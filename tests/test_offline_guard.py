import socket

import pytest

from tests.conftest import OutboundNetworkBlocked


def test_outbound_connection_is_blocked():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(OutboundNetworkBlocked):
        sock.connect(("93.184.216.34", 443))


def test_loopback_is_allowed():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.connect(server.getsockname())


def test_cli_help_lists_layers():
    from core.cli import build_parser

    text = build_parser().format_help()
    assert "COMMAND" in text
