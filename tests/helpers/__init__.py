"""What the tests share: job helpers, the app's helpers, the local Hub, run fixtures."""
