"""safety stage."""
