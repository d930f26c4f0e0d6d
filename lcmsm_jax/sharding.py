"""Device mesh and shardings. Data parallel over the mesh's "data" axis; state replicated.

Under `jax.jit` with these shardings, batch reductions (losses, BatchNorm statistics) are
global: XLA inserts the cross-device collectives, so there is no `pmean` in the step.
"""

from __future__ import annotations

import os

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Join a multi-process run when the launcher asks for it (no-op otherwise).

    Launchers set `LCMSM_MULTIPROCESS=1` (or `JAX_COORDINATOR_ADDRESS`);
    `jax.distributed.initialize()` then finds the coordinator itself on TPU pods and SLURM.
    """
    if os.environ.get("LCMSM_MULTIPROCESS") == "1" or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()


def make_mesh(data: int = -1) -> jax.sharding.Mesh:
    """1-D mesh with axis "data" over the first `data` devices (-1 = all; config.mesh.data)."""
    count = jax.device_count()
    n = count if data == -1 else int(data)
    if not 1 <= n <= count:
        raise ValueError(f"config.mesh.data = {data}: this job has {count} devices")
    if jax.process_count() > 1 and n != count:
        raise ValueError(f"config.mesh.data = {data}: a multi-process job must use all devices")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


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
