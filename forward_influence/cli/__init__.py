"""Command-line entry points. Only these configure logging."""
