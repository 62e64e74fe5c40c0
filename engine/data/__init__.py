"""Rows in, training text out: reading dataset files, chat templates, preparing a run's data."""
