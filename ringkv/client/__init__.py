"""Client side of the protocol: the client library (sync and asyncio)."""

from ringkv.client.client import (
    AsyncClient,
    Client,
    ClientError,
    ClientTimeout,
    Reply,
    RetryPolicy,
    describe_err,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "ClientTimeout",
    "Reply",
    "RetryPolicy",
    "describe_err",
]
