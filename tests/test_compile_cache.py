import os
import subprocess
import sys

from intriguing_jax import compile_cache

SCRIPT = """
import sys, jax, jax.numpy as jnp
from intriguing_jax import compile_cache
compile_cache.enable(sys.argv[1], min_compile_time_secs=0.0)
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + jnp.tanh(x).sum())
f(jnp.ones((8, 8))).block_until_ready()
s = compile_cache.stats()
print("STATS", s["hits"], s["misses"])
"""


def test_default_dir_prefers_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    assert compile_cache.default_dir(tmp_path) == tmp_path / "jax_cache"
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "elsewhere"))
    assert compile_cache.default_dir(tmp_path) == tmp_path / "elsewhere"


def test_a_second_process_loads_instead_of_compiling(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def run():
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                             env=env, check=True).stdout
        hits, misses = (int(v) for v in out.split("STATS")[1].split())
        return hits, misses

    first, second = run(), run()
    assert first[0] == 0 and first[1] >= 1
    assert second[0] >= 1 and second[1] == 0
    assert any(tmp_path.iterdir())
