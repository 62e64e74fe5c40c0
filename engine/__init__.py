"""loradeck's engine: config, sources, data, training jobs, chat, merge, hub. Knows no screen."""

__version__ = "0.1.0"
