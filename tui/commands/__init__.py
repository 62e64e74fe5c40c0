"""One module per CLI command group; each exposes ``run(args) -> int``."""
