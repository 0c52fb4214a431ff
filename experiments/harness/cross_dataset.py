"""The paper's claims on each dataset side by side: one row per claim, its verdict by the same rule on
MNIST (``results/``) and on every other dataset run (``results/<dataset>/``), and whether they agree.
Every cell is a ``Verdict`` a pipeline's ``claims`` computed from its JSON; the table draws no conclusion
of its own beyond comparing them."""

from __future__ import annotations

import json
import pathlib

from experiments.harness.report import table


def _verdict_cell(v) -> str:
    if v is None:
        return "–"
    return {True: "holds", False: "does not hold", None: "no verdict"}[v.holds]


def _agreement(cells: dict) -> str:
    """What the verdicts on the datasets say together (only the datasets with a verdict count)."""
    known = {d: v.holds for d, v in cells.items() if v is not None and v.holds is not None}
    if len(known) < 2:
        return "one dataset only" if known else "no verdict"
    if all(known.values()):
        return "holds on every dataset"
    if not any(known.values()):
        return "holds on none"
    return "holds on " + ", ".join(d for d, h in known.items() if h) + " only"


def section(pipelines: dict, results: pathlib.Path, datasets: dict[str, str]) -> str:
    """The cross-dataset table, or "" when fewer than two datasets have results.

    Args:
      pipelines: name -> (module with ``claims(result)`` and ``PAPER_SOURCE``, JSON file name).
      results: the MNIST results directory; another dataset's results are in ``results / <name>``.
      datasets: dataset name -> title (``data.DATASETS``), MNIST first.
    """
    dirs = {title: results if name == "mnist" else results / name for name, title in datasets.items()}
    dirs = {t: d for t, d in dirs.items() if any((d / f).exists() for _, f in pipelines.values())}
    if len(dirs) < 2:
        return ""
    rows = []
    for name, (module, filename) in pipelines.items():
        found = {}
        for title, d in dirs.items():
            path = d / filename
            try:
                found[title] = module.claims(json.loads(path.read_text())) if path.exists() else []
            except (KeyError, TypeError, ValueError):  # written by an older version of the pipeline
                found[title] = []
        own = getattr(module, "OWN_READINGS", ())
        for i in range(max(map(len, found.values()))):
            cells = {t: (vs[i] if i < len(vs) else None) for t, vs in found.items()}
            claim = next((v.claim for v in cells.values() if v is not None), None)
            if claim is None:
                continue
            paper = "–" if module.PAPER_SOURCE is None or i in own else f"claimed ({module.PAPER_SOURCE})"
            rows.append([claim, paper] + [_verdict_cell(cells[t]) for t in dirs] + [_agreement(cells)])
    return ("## The claims on each dataset\n\n"
            "Each claim's verdict by the same rule (stated in each dataset's report) on every dataset run here; "
            "\"paper\" says where the paper makes the claim on MNIST (– : a check or reading of ours). The last "
            "column only compares the verdicts.\n\n"
            + table(["Claim", "Paper (MNIST)"] + [f"Ours, {t}" for t in dirs] + ["Verdicts"], rows))
