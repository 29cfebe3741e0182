"""Command-line tools:

- `check_features`: `python -m openrlhf_meds.tools.check_features`, the patched vLLM engine's
  features vs the Hugging Face reference, and tokens/s with and without the patch;
- `inspect_memory`: `python -m openrlhf_meds.tools.inspect_memory`, a saved memory's clusters
  as text and pictures;
- `check_recipe`: `python -m openrlhf_meds.tools.check_recipe`, a recipe's dry run against an
  official run, setting by setting, from `official_runs` (the official runs as data).
"""
