"""Load generators that speak the public protocols and print figures (never run as tests)."""
