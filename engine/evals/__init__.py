"""Evaluation: prompt suites answered by the base, the tuned adapter, its checkpoints and its
GGUF files, scored with sacrebleu and rouge-score, judged pairwise, and benchmarked with
lm-evaluation-harness (``loradeck eval``)."""
