"""loradeck's engine: config, sources, data, training jobs, chat, merge, hub. Knows no screen."""

from loradeck.engine.system import log_filters as _log_filters

__version__ = "0.1.0"

_log_filters.install()  # library noise out of every command's output and train.log
