"""Device mesh and shardings. Data parallel over the mesh's "data" axis; state replicated.

Under `jax.jit` with these shardings, batch reductions (losses, BatchNorm statistics) are
global: XLA inserts the cross-device collectives, so there is no `pmean` in the step.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from jax.sharding import AxisType, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Join a multi-process run when the launcher asks for it (no-op otherwise).

    Launchers set `LCMSM_MULTIPROCESS=1` (or `JAX_COORDINATOR_ADDRESS`);
    `jax.distributed.initialize()` then finds the coordinator itself on TPU pods and SLURM.
    """
    if os.environ.get("LCMSM_MULTIPROCESS") == "1" or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """A 1-D mesh over `config.data` devices (-1 = all devices of all processes)."""
    count = jax.device_count() if config.data == -1 else int(config.data)
    if count < 1 or count > jax.device_count() or jax.device_count() % count:
        raise ValueError(
            f"config.mesh.data = {config.data}: must be -1 or a divisor of the "
            f"{jax.device_count()} available devices"
        )
    return jax.make_mesh((count,), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data", the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh, what: str) -> int:
    """The per-process share of a global batch; errors name the config field."""
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(
            f"{what} = {global_batch} is not divisible by the {devices} devices of the mesh"
        )
    return global_batch // jax.process_count()
