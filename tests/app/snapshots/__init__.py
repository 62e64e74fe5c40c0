"""One snapshot module per screen, at 80x24 and larger."""
