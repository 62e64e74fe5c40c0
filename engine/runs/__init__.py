"""The run directory and its files: the store, the events file, the job lock, paths."""
