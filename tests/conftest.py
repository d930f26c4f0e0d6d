"""Test set-up: 8 simulated CPU devices, configured before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Parity tests compare against float32 PyTorch; keep XLA's matmuls at full precision.
jax.config.update("jax_default_matmul_precision", "highest")
