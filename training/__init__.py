"""training package (built by later issues)."""
