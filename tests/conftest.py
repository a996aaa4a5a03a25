"""Fixtures shared by the tests that drive one real `ringkv node` process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ringkv.client.client import Client
from ringkv.client.local import LocalNode, local_node


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    """One node process per test module, on a free loopback port."""
    with local_node() as running:
        yield running


@pytest.fixture
def client(node: LocalNode) -> Iterator[Client]:
    with Client(node.addr) as c:
        yield c
