"""Suite-wide fixtures: offline guard, quiet threads, and an isolated DSV_HOME per session.

Area-specific fixtures (a tiny model, a Kafka broker, a model server) live in the area's own
``tests/<area>/conftest.py`` or in ``tests/fixtures.py`` for the ones several areas share.
"""
from __future__ import annotations

import ipaddress
import os
import socket

import pytest

# Set before anything imports torch / transformers / huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

pytest_plugins = ["tests.fixtures"]


class OutboundNetworkBlocked(RuntimeError):
    """Raised when a test tries to reach anything that is not loopback (a hub download, say)."""


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)) and not isinstance(address, tuple):
        return True  # AF_UNIX path
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:  # a host name: allowed only if it resolves to loopback
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise OutboundNetworkBlocked(f"test tried to reach {address!r}: the suite runs offline")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise OutboundNetworkBlocked(f"test tried to reach {address!r}: the suite runs offline")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def block_outbound_network():
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex


@pytest.fixture(autouse=True, scope="session")
def isolated_home(tmp_path_factory):
    """Every test session gets its own DSV_HOME so tests never touch the developer's var/."""
    home = tmp_path_factory.mktemp("dsv_home")
    old = os.environ.get("DSV_HOME")
    os.environ["DSV_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("DSV_HOME", None)
    else:
        os.environ["DSV_HOME"] = old
