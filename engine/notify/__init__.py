"""Notifications through apprise when a detached run ends or the queue runs out of work."""
