"""Test-wide JAX set-up: 8 emulated CPU devices, strict rank promotion, persistent compile cache.

This runs before any test module imports JAX-using code, so the device count is set before the CPU
backend starts. `jax_num_cpu_devices` raises when it is too late (unlike XLA_FLAGS, which silently
gives one device), and the count is asserted below.
"""

import os
import pathlib

import jax

jax.config.update("jax_platforms", "cpu")  # tests never need an accelerator
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
_cache = os.environ.get(
    "PARETOLAB_JAX_CACHE", str(pathlib.Path(__file__).resolve().parent.parent / ".jax_cache")
)
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

if jax.device_count() != 8:
    raise RuntimeError(
        f"tests need 8 emulated CPU devices, got {jax.device_count()}: was JAX's backend started "
        "before tests/conftest.py ran?"
    )
