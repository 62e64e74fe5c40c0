"""loradeck's terminal app and command line."""
