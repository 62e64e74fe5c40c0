"""Model sources (Hub id, local directory, cache, demo:tiny), their files, and loading them."""
