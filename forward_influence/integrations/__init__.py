"""Optional integrations with other libraries (each importable only where that library is installed)."""
