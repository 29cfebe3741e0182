"""Command-line tools: `python -m openrlhf_meds.tools.check_features` (patched vLLM engine
vs the Hugging Face reference features)."""
