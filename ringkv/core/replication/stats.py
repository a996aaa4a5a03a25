"""Counters of what replication did, for `ringkv cluster status`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReplicationStats:
    writes_led: int = 0
    replicated: int = 0
    refused_copies: int = 0
    refused_stamps: int = 0  # copies stamped beyond any correct head's clock
    refused_senders: int = 0  # messages naming another node than the one that sent them
    transfers_done: int = 0
    transfers_retried: int = 0  # no batch for sync_retry: lost datagrams or a slow source
    keys_pulled: int = 0  # entries that pulls brought, newer or not
    keys_received: int = 0  # of those, newer than this node's copy (applied)
