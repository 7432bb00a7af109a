"""control service."""
