"""The run queue: runs lined up to train one after another, or side by side on their own GPUs,
by a runner that outlives the terminal (``loradeck queue``)."""
