"""The computation a results directory records: what each pipeline and its cached steps took."""

from __future__ import annotations

import datetime
import json
import pathlib


def training_cost(meta: dict) -> dict:
    """What a cached model's training took and when (``train_wall_s``, ``computed_at``), from the
    checkpoint metadata ``meta`` that ``zoo.trained`` returns: the fields ``recorded_minutes`` reads."""
    return {"train_wall_s": meta["provenance"]["wall_time_s"], "computed_at": meta["provenance"].get("date")}


# sections a recorded study command merges into a pipeline's result file: computed by that command, not
# by the pipeline (``experiments.advtrain_controls``)
MERGED_STUDIES = ("controls", "controls_provenance")


def recorded_minutes(paths) -> float:
    """The computation the result files ``paths`` record, in minutes: each pipeline's wall time, plus what its
    cached steps took when they were computed (models' ``train_wall_s``, adversarial-training runs'
    ``wall_s``; a study entry counts ``wall_s_mean`` once per seed), leaving out the sections study
    commands merged in (``MERGED_STUDIES``) and the steps whose ``computed_at`` (one stamp, or one per
    seed) falls inside the pipeline's own run: their time is already in its wall time. A step without a
    stamp counts. 0 if nothing is recorded."""
    def during(stamp, window) -> bool:
        if window is None or not isinstance(stamp, str):
            return False
        t = datetime.datetime.fromisoformat(stamp)
        return window[0] <= t <= window[1]

    def walk(x, window) -> float:
        if isinstance(x, list):
            return sum(walk(v, window) for v in x)
        if not isinstance(x, dict):
            return 0.0
        own = 0.0
        if not during(x.get("computed_at"), window):
            own = sum(float(x[k]) for k in ("train_wall_s", "wall_s") if isinstance(x.get(k), (int, float)))
        if x.get("wall_s_mean") is not None and "test_errors" in x:
            stamps = x.get("computed_at")
            stamps = stamps if isinstance(stamps, list) else [stamps] * len(x["test_errors"])
            own += x["wall_s_mean"] * sum(not during(s, window) for s in stamps)
        return own + sum(walk(v, window) for k, v in x.items() if k not in MERGED_STUDIES and k != "provenance")

    total = 0.0
    for p in map(pathlib.Path, paths):
        if not p.exists():
            continue
        result = json.loads(p.read_text())
        prov, window = result.get("provenance") or {}, None
        if isinstance(prov.get("wall_time_s"), (int, float)):
            total += float(prov["wall_time_s"])
            if isinstance(prov.get("date"), str):
                end = datetime.datetime.fromisoformat(prov["date"])
                window = (end - datetime.timedelta(seconds=float(prov["wall_time_s"]) + 1), end + datetime.timedelta(seconds=1))
        total += walk(result, window)
    return total / 60
