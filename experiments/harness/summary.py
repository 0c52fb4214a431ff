"""The README's results block, rendered from the result files: which runs made them (command, commit,
date and wall time per file), Table 1 beside the paper, and every claim's verdict by its rule. Written
between two markers by ``python -m experiments.reproduce --render``; a test checks that the committed README
holds what the committed JSON renders, so no number in it can drift from a run."""

from __future__ import annotations

import json
import pathlib

from experiments.harness import paper, report, verdicts

BEGIN = "<!-- results block: written by `python -m experiments.reproduce --render` from results/*.json; do not edit -->"
END = "<!-- end of results block -->"


def _runs(files: dict[str, dict]) -> str:
    rows = []
    for name, result in files.items():
        p = result.get("provenance", {})
        code = p.get("code") or {}
        commit = code.get("commit")
        made = (f"`{commit[:10]}`" + (" (dirty tree)" if code.get("dirty") else "")) if commit else "not recorded"
        rows.append([f"`{name}`", f"`{p.get('command', '?')}`", made, str(p.get("date", "?"))[:10],
                     f"{p['wall_time_s'] / 60:.0f} min" if isinstance(p.get("wall_time_s"), (int, float)) else "?"])
    recorded = {r[2] for r in rows if r[2] != "not recorded"}
    unrecorded = sum(r[2] == "not recorded" for r in rows)
    if unrecorded == 0 and len(recorded) == 1:
        lead = "Every file below was made by the same commit."
    else:
        lead = (f"These files were made by {len(recorded)} recorded commit(s)"
                + (f", and {unrecorded} by code that recorded no commit (before result files did)" if unrecorded else "")
                + ": read each number with the run that made it.")
    return lead + "\n\n" + report.table(["File", "Command", "Commit", "Date", "Wall time of the command"], rows)


def _table1(result: dict) -> str:
    body = [[name, report.pct(r["test_error"]), report.pct(paper.TABLE1[name][1]) if name in paper.TABLE1 else "–",
             report.num(r["mean_distortion"]), report.num(paper.TABLE1[name][2]) if name in paper.TABLE1 else "–",
             report.pct(r["success_rate"], 1)] for name, r in result["rows"].items()]
    return (f"**Table 1** ({result['num_images']} training images, seeded random wrong targets; paper values [2nd]):\n\n"
            + report.table(["Model", "Test err (ours)", "(paper)", "Av. min. distortion (ours)", "(paper)",
                            "Attack success"], body))


def block(results: pathlib.Path, pipelines: dict) -> str:
    """The block's Markdown (without the markers).

    Args:
      results: the MNIST results directory.
      pipelines: name -> (module with ``claims(result)``, JSON file name), in report order.
    """
    found, claims = {}, []
    for name, (module, filename) in pipelines.items():
        path = results / filename
        if not path.exists():
            continue
        found[filename] = json.loads(path.read_text())
        claims += [v for v in module.claims(found[filename]) if v is not None]
    for extra in ("training_study.json",):
        if (results / extra).exists():
            found[extra] = json.loads((results / extra).read_text())
    if not found:
        return "No results yet: run `python -m experiments.reproduce`."
    parts = ["**What made these numbers.** " + _runs(found)]
    if "table1.json" in found:
        parts.append(_table1(found["table1.json"]))
    parts.append("**Every claim, by its rule** (the rule and every number behind it are in `results/REPORT.md`):\n\n"
                 + verdicts.bullets(claims))
    return "\n\n".join(parts)


def rewrite(readme: pathlib.Path, text: str) -> bool:
    """Replaces what lies between the markers in ``readme`` with ``text``; False if it has no markers."""
    old = readme.read_text()
    if BEGIN not in old or END not in old:
        return False
    head, rest = old.split(BEGIN, 1)
    readme.write_text(head + BEGIN + "\n\n" + text + "\n\n" + END + rest.split(END, 1)[1])
    return True


def current(readme: pathlib.Path) -> str | None:
    """What lies between the markers in ``readme`` (stripped), or None."""
    old = readme.read_text()
    if BEGIN not in old or END not in old:
        return None
    return old.split(BEGIN, 1)[1].split(END, 1)[0].strip()
