"""evaluation package (built by later issues)."""
