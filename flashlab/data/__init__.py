"""Data files shipped with flashlab (see README.md here)."""
