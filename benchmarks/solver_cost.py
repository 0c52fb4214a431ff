"""Where a batched L-BFGS iteration goes: the solver's own work beside the model's value and gradient.

    taskset -c 0 python -m benchmarks.solver_cost                      # FC100-100-10, 200 and 1,000 rows, history 5 and 10
    taskset -c 0 python -m benchmarks.solver_cost --rows 576 --model ConvNet

One iteration of ``intriguing_jax.lbfgsb`` is one batched value-and-gradient call of the objective plus
the solver's update (``propose`` and ``accept``: the L-BFGS memory's inner products, the two-loop
combination, the projected step). Per (rows, history), this times, each as 50 iterations in one compiled
loop after a compiling call: the solver's update alone (random memory, every pair stored), the
model's forward and backward pass on as many rows, and their sum's share taken by the solver. The update
reads the [rows, history, 784] memory several times per iteration, so it grows with rows × history; a
model's pass grows with its size. Run it alone on a pinned core (a busy neighbour shares the memory
bandwidth the update depends on). Writes the rows as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp

from intriguing_jax import lbfgsb, models, provenance

ITERATIONS = 50


def _per_iteration(loop, *args) -> float:
    """Seconds per iteration of ``loop`` (``ITERATIONS`` of them), after a compiling call."""
    jax.block_until_ready(loop(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(loop(*args))
    return (time.perf_counter() - t0) / ITERATIONS


def solver_update_s(rows: int, history: int, dim: int) -> float:
    """Seconds per ``propose`` + ``accept`` on ``rows`` rows with a full memory of ``history`` pairs."""
    k = jax.random.split(jax.random.key(0), 4)
    x0 = jax.random.uniform(k[0], (rows, dim))
    lo, hi = jnp.zeros_like(x0), jnp.ones_like(x0)
    st = lbfgsb.init_rows(x0, jnp.zeros(rows), jax.random.normal(k[1], (rows, dim)), lo, hi, history=history)
    st = st._replace(s_mem=jax.random.normal(k[2], (rows, history, dim)), y_mem=jax.random.normal(k[3], (rows, history, dim)),
                     sy=jnp.broadcast_to(jnp.eye(history), (rows, history, history)),
                     yy=jnp.broadcast_to(jnp.eye(history), (rows, history, history)), store=jnp.ones(rows, bool))

    @jax.jit
    def loop(st):
        def body(_, s):
            s, xt = lbfgsb.propose(s, lo, hi)
            return lbfgsb.accept(s, xt, s.f - 1.0, 0.9 * s.g, lo, hi)[0]
        return jax.lax.fori_loop(0, ITERATIONS, body, st)
    return _per_iteration(loop, st)


def model_pass_s(model_name: str, rows: int) -> float:
    """Seconds per forward + backward pass (gradient with respect to the input) of ``model_name`` on ``rows``."""
    model = models.build(model_name)
    params = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (rows, models.NUM_PIXELS))
    grad = jax.grad(lambda z: jnp.sum(jax.nn.log_softmax(model.apply(params, z))[:, 0]))

    @jax.jit
    def loop(x):
        return jax.lax.fori_loop(0, ITERATIONS, lambda _, z: z + 1e-6 * grad(z), x)
    return _per_iteration(loop, x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="FC100-100-10")
    p.add_argument("--rows", type=int, nargs="+", default=[200, 1000])
    p.add_argument("--history", type=int, nargs="+", default=[5, 10])
    p.add_argument("--out", default="benchmarks/solver_cost.json")
    args = p.parse_args(argv)
    if min(args.rows) < 1 or min(args.history) < 1:
        p.error("--rows and --history must be positive")
    out, t0 = [], time.time()
    print(f"{'rows':>6} {'history':>7} {'solver ms':>10} {'model ms':>9} {'solver share':>12}")
    for rows in args.rows:
        model_s = model_pass_s(args.model, rows)
        for history in args.history:
            solver_s = solver_update_s(rows, history, models.NUM_PIXELS)
            row = {"model": args.model, "rows": rows, "history": history, "solver_ms": 1e3 * solver_s,
                   "model_ms": 1e3 * model_s, "solver_share": solver_s / (solver_s + model_s)}
            out.append(row)
            print(f"{rows:>6} {history:>7} {row['solver_ms']:>10.2f} {row['model_ms']:>9.2f} {row['solver_share']:>12.0%}")
    record = {"rows": out, "iterations": ITERATIONS, "machine": platform.machine(),
              "provenance": provenance.record(0, time.time() - t0)}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
