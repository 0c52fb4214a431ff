"""Adversarial training with per-layer pools vs weight decay alone (end of Sec. 4.2).

Run by ``python -m experiments.reproduce`` (``--only advtrain``). FC100-100-10 (sigmoid, the paper's
per-layer weight decay) is trained with the same optimiser and epochs in four variants, for each seed:
weight decay alone; an input-layer pool; pools for the two hidden layers' outputs only; pools for the
input and both hidden layers. Reported: test error (mean ± spread over seeds), test-error and
attack-distortion curves over training, and the L-BFGS attack's average minimum distortion on the first
test images for each final model. Each run checkpoints every epoch (weights, optimiser, pools) and resumes.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np
from jax.tree_util import Partial

from experiments import common
from intriguing_jax import adversarial_training as at
from intriguing_jax import attacks, figures, models, provenance, report, train

MODEL = "FC100-100-10"
VARIANTS = {"weight decay only": (), "input pool": (0,), "hidden-layer pools": (1, 2),
            "input + hidden-layer pools": (0, 1, 2)}
SEEDS = (0, 1)
EVAL_IMAGES = 100  # attacked every few epochs for the distortion curve
FINAL_IMAGES = 300  # attacked at the end for the robustness table
CURVE_EVERY = 10


def _attack_stats(ctx, model, params, x, targets, cache=None) -> dict:
    res = attacks.attack_in_chunks(Partial(model.apply, params), x, targets, config=ctx.attack_cfg,
                                   chunk_size=ctx.chunk_size, cache_dir=cache)
    return attacks.summarize(res)


def run_one(ctx, mnist, variant: str, seed: int) -> dict:
    model = models.build(MODEL)
    adv = at.AdvTrainConfig(layers=VARIANTS[variant])
    slug = "".join(ch if ch.isalnum() else "_" for ch in variant)
    stem = f"{slug}_s{seed}_{provenance.config_hash(ctx.train_cfg)}_{provenance.config_hash(adv)}"
    work = pathlib.Path(ctx.workdir) / "adversarial_training"
    result_path = work / f"{stem}.json"
    if result_path.exists():  # finished earlier: reuse
        return json.loads(result_path.read_text())
    x_eval, _, t_eval = common.first_images(ctx, mnist.test)
    n_eval = min(EVAL_IMAGES, len(x_eval))
    epochs = ctx.train_cfg.epochs or models.spec(MODEL).epochs
    bar, tick = common.epoch_bar(epochs, f"{variant} (seed {seed})")
    t0 = time.time()

    def on_epoch(epoch, params):
        tick(epoch, 0.0)
        rec = {"test_error": train.error_rate(model.apply, params, mnist.test)}
        if (epoch + 1) % CURVE_EVERY == 0 or epoch + 1 == epochs:
            rec["distortion"] = _attack_stats(ctx, model, params, x_eval[:n_eval], t_eval[:n_eval])["mean_distortion"]
        return rec

    params, history = at.fit(model, mnist.train, common.Context(seed=seed).key(), ctx.train_cfg, adv,
                             checkpoint_path=work / f"{stem}.ckpt", on_epoch=on_epoch)
    bar.close()
    n_final = min(FINAL_IMAGES, len(x_eval))
    final = _attack_stats(ctx, model, params, x_eval[:n_final], t_eval[:n_final], cache=work / f"{stem}_attack")
    out = {"variant": variant, "layers": list(adv.layers), "seed": seed, "history": history,
           "test_error": history[-1]["test_error"], "train_error": train.error_rate(model.apply, params, mnist.train),
           "attack": {k: final[k] for k in ("n", "success_rate", "mean_distortion", "median_distortion")},
           "wall_s": time.time() - t0, "adv_config": dataclasses.asdict(adv)}
    provenance.write_json(result_path, out)
    print(f"{variant} seed {seed}: test {out['test_error']:.2%}, distortion {final['mean_distortion']:.4f}")
    return out


def run(ctx: common.Context, mnist, variants=tuple(VARIANTS), seeds=SEEDS) -> dict:
    t0 = time.time()
    runs = {v: [run_one(ctx, mnist, v, s) for s in seeds] for v in variants}
    summary = {v: {"test_error_mean": float(np.mean([r["test_error"] for r in rs])),
                   "test_error_spread": float(np.ptp([r["test_error"] for r in rs])),
                   "distortion_mean": float(np.mean([r["attack"]["mean_distortion"] for r in rs])),
                   "distortion_spread": float(np.ptp([r["attack"]["mean_distortion"] for r in rs])),
                   "success_rate": float(np.mean([r["attack"]["success_rate"] for r in rs])),
                   "layers": rs[0]["layers"]} for v, rs in runs.items()}
    path = ctx.out / "figures" / "adversarial_training.png"
    figures.curves(path, {f"{v} (seed {r['seed']})": r["history"] for v, rs in runs.items() for r in rs},
                   keys=("test_error", "distortion"), xlabel="epoch")
    result = {"model": MODEL, "seeds": list(seeds), "summary": summary, "runs": runs,
              "figure": str(path.relative_to(ctx.out)),
              "train_config": dataclasses.asdict(ctx.train_cfg),
              "provenance": common.record(ctx, t0, pipeline="adversarial_training")}
    return common.publish(ctx, "adversarial_training.json", "adversarial_training.md", result, render)


def verdicts(result: dict) -> list[str]:
    s = result["summary"]
    out = []
    best = min(s, key=lambda v: s[v]["test_error_mean"])
    full = "input + hidden-layer pools"
    if full in s and "weight decay only" in s:
        f, w = s[full], s["weight decay only"]
        holds = f["test_error_mean"] < 0.012
        out.append(f"**Adversarial training with per-layer pools reaches test error below 1.2% (paper [text], vs 1.6% "
                   f"with weight decay alone): {'holds' if holds else 'does not hold'}.** Ours: "
                   f"{report.pct(f['test_error_mean'])} (spread {report.pct(f['test_error_spread'])}) vs "
                   f"{report.pct(w['test_error_mean'])} (spread {report.pct(w['test_error_spread'])}) with weight "
                   f"decay alone, over {len(result['seeds'])} seeds; best variant: {best}. Our pools (sizes, "
                   "refresh, mix 0.5, random wrong targets) are our choice — the paper gives none — and other "
                   "settings may behave differently.")
    if "input pool" in s and "hidden-layer pools" in s:
        i, h = s["input pool"], s["hidden-layer pools"]
        margin = max(i["test_error_spread"], h["test_error_spread"])
        holds = h["test_error_mean"] < i["test_error_mean"] - margin
        base = s.get("weight decay only", {}).get("test_error_mean")
        vs_base = ("" if base is None else
                   f"; weight decay alone: {report.pct(base)}, so in our setting "
                   + ("the pools help" if h["test_error_mean"] < base else "both pools cost clean accuracy and "
                      "the hidden-layer pools only cost less"))
        out.append(f"**Higher layers' examples are more useful: {'holds' if holds else 'does not hold'}** (rule: "
                   f"hidden-layer pools beat the input pool by more than the seeds' spread). Test error "
                   f"{report.pct(h['test_error_mean'])} with hidden-layer pools vs {report.pct(i['test_error_mean'])} "
                   f"with the input pool (spread ≤ {report.pct(margin)}){vs_base}.")
    if "weight decay only" in s:
        w = s["weight decay only"]["distortion_mean"]
        rises = {v: x["distortion_mean"] / w for v, x in s.items() if v != "weight decay only"}
        out.append("**Adversarial training raises the distortion the attack needs:** "
                   + ", ".join(f"{v} {r:.2f}×" for v, r in rises.items())
                   + f" the weight-decay-only model's {w:.4f}.")
    return out


def render(result: dict) -> str:
    body = [[v, str(tuple(x["layers"])) if x["layers"] else "–",
             f"{report.pct(x['test_error_mean'])} ± {report.pct(x['test_error_spread'] / 2)}",
             f"{x['distortion_mean']:.4f} ± {x['distortion_spread'] / 2:.4f}", report.pct(x["success_rate"], 1)]
            for v, x in result["summary"].items()]
    per_run = [[v, r["seed"], report.pct(r["test_error"]), report.pct(r["train_error"]),
                report.num(r["attack"]["mean_distortion"], 4), f"{r['wall_s']:.0f} s"]
               for v, rs in result["runs"].items() for r in rs]
    cfg = next(iter(result["runs"].values()))[0]["adv_config"]
    return ("## Adversarial training with per-layer pools (Sec. 4.2)\n\n"
            f"{result['model']}, {len(result['seeds'])} seeds, same optimiser and epochs for every variant. Pools: "
            f"{cfg['pool_size']} per layer, {cfg['refresh_count']} slots refreshed every {cfg['refresh_every']} "
            f"steps with the L-BFGS attack (c steps {cfg['attack']['c_steps']}, {cfg['attack']['maxiter']} "
            f"iterations) against the current weights, {cfg['pool_batch']} pool examples per pool per step, "
            f"loss mix {cfg['mix']}. Layer 0 = input, 1 and 2 = the hidden layers' outputs. ± is half the "
            "spread (max − min) over seeds. Distortion: the full attack's mean minimum distortion on the first "
            f"{FINAL_IMAGES} test images (seeded random wrong targets). Paper [text]: below 1.2% with pools vs "
            "1.6% with weight decay alone.\n\n"
            + report.table(["Variant", "Pool layers", "Test error", "Av. min. distortion", "Attack success"], body)
            + "\n" + report.table(["Variant", "Seed", "Test error", "Train error", "Distortion", "Wall"], per_run)
            + "\n" + "\n".join(f"- {v}" for v in verdicts(result)) + "\n\n"
            + f"![curves]({result['figure']})\n\n" + report.provenance_line(result["provenance"]) + "\n")
