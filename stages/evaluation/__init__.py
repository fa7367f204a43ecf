"""What evaluation writes and the report reads: the metrics JSON's schema."""
