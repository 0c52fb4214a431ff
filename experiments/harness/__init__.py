"""The reproduction harness: what turns the library's results into the paper's tables.

Kept apart from ``intriguing_jax`` so that a user who imports the attack loads none of it:
``paper`` (the paper's reference numbers with provenance marks), ``verdicts`` (each claim's rule as a
function of a summary), ``report`` (Markdown rendering and publishing a result as JSON + Markdown),
``figures`` (PNG, matplotlib), ``runs`` (adversarial-training runs cached on disk and the study over
them) and ``runtime`` (the computation a results directory records).
"""
