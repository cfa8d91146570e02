"""clip stage."""
