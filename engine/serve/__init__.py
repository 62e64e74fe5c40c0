"""Chat: the worker protocol, the worker process, its client, and what it serves."""
