"""The feedback loop: the prediction log, ground-truth labels, outcomes per variant
and the A/B verdict (docs/architecture.md)."""
