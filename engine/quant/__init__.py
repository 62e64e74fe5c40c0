"""QA-LoRA: group INT4 codes of the base weights, the layers that run them, and the fold of
the adapter into their offsets."""
