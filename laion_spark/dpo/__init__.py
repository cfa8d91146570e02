"""dpo stage."""
