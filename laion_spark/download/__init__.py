"""download stage."""
