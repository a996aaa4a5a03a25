"""The simulated network: per-datagram delay, loss, duplication and partitions.

Pure decisions, no clock and no queue: the cluster asks `fate(src, dst)` for
every datagram it sends and schedules a delivery for each delay returned.
Every random choice comes from the one `random.Random` given, so a run
replays exactly from its seed. Reordering is not a separate knob: two
datagrams on the same path get independent delays and may overtake.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

_NO_SIDE = 0  # nodes outside every partition group, and every client


@dataclass(frozen=True)
class NetworkConfig:
    """Delays in seconds.

    delay_min/delay_max 0.2-2 ms: a LAN or a loaded loopback, uniform.
    tail_prob/tail_mean: 1 % of datagrams wait an extra exponential 10 ms on
        average (a busy receiver, a switch queue), which makes reordering
        and the occasional retry happen as they do on real hosts.
    loss: probability that a datagram vanishes (every datagram, clients' too).
    duplicate: probability that a delivered datagram arrives twice.
    """

    delay_min: float = 0.0002
    delay_max: float = 0.002
    tail_prob: float = 0.01
    tail_mean: float = 0.01
    loss: float = 0.0
    duplicate: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.delay_min <= self.delay_max:
            raise ValueError("need 0 <= delay_min <= delay_max")
        for name in ("tail_prob", "loss", "duplicate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability")


@dataclass
class NetworkStats:
    sent: int = 0
    delivered: int = 0  # deliveries scheduled, duplicates included
    lost: int = 0
    cut: int = 0  # dropped by a partition
    duplicated: int = 0


@dataclass
class Network:
    """Decides the fate of each datagram between endpoints of known nodes.

    `owner` maps every node address (data and gossip port) to its node index;
    addresses missing from it (clients) are never partitioned away.
    """

    config: NetworkConfig
    rng: random.Random
    owner: dict[tuple[str, int], int]
    stats: NetworkStats = field(default_factory=NetworkStats)
    _side: dict[int, int] = field(default_factory=dict)
    loss: float = -1.0  # current loss; starts at the config's

    def __post_init__(self) -> None:
        if self.loss < 0:
            self.loss = self.config.loss

    # -- partitions ---------------------------------------------------------

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Cut the network between the groups (and the nodes in none of them)."""
        self._side = {}
        for number, group in enumerate(groups, 1):
            for node in group:
                self._side[node] = number

    def heal(self) -> None:
        self._side = {}

    @property
    def partitioned(self) -> bool:
        return bool(self._side)

    def is_cut(self, node: int) -> bool:
        return node in self._side

    def cut_off(self) -> list[int]:
        """The nodes in partition groups, sorted."""
        return sorted(self._side)

    def connected(self, a: int, b: int) -> bool:
        side = self._side
        return side.get(a, _NO_SIDE) == side.get(b, _NO_SIDE)

    # -- per datagram -------------------------------------------------------

    def fate(self, src: tuple[str, int], dst: tuple[str, int]) -> tuple[float, ...]:
        """The delays after which the datagram arrives: () lost, two values duplicated."""
        stats = self.stats
        stats.sent += 1
        if self._side and not self._reachable(src, dst):
            stats.cut += 1
            return ()
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            stats.lost += 1
            return ()
        dup = self.config.duplicate
        if dup and rng.random() < dup:
            stats.duplicated += 1
            stats.delivered += 2
            return self._delay(), self._delay()
        stats.delivered += 1
        return (self._delay(),)

    def _reachable(self, src: tuple[str, int], dst: tuple[str, int]) -> bool:
        a = self.owner.get(src)
        b = self.owner.get(dst)
        return a is None or b is None or self.connected(a, b)

    def _delay(self) -> float:
        cfg = self.config
        rng = self.rng
        delay = cfg.delay_min + (cfg.delay_max - cfg.delay_min) * rng.random()
        if cfg.tail_prob and rng.random() < cfg.tail_prob:
            delay += rng.expovariate(1.0 / cfg.tail_mean)
        return delay
