"""The `ringkv` command line (entry point `ringkv.cli:main`, also `python -m ringkv`).

- main:     the `ringkv` group and its own commands: node, put, get, rm, alive,
            pid, members, wipe, shutdown, echo, bench, fuzz, keygen, keyring
- cluster:  `ringkv cluster …`, start, watch and steer a cluster
- check:    `ringkv check`, the evaluation's stages (ringkv.check)
- sim:      `ringkv sim`, a scenario in the simulator (ringkv.sim)
- options:  click options and parameter types that several commands share
"""

from ringkv.cli import check, cluster, sim
from ringkv.cli.main import main

main.add_command(check.check)
main.add_command(cluster.cluster)
main.add_command(sim.sim)

__all__ = ["main"]
