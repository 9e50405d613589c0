"""Pure functions over run directories: tables, statistics, routing metrics, plots."""
