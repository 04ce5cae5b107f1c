"""Run storage and tables: the run directory, its parquet tables and JSON, schema checks (torch-free)."""
