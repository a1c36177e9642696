"""hibernate."""
