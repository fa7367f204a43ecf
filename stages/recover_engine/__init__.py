"""Teacher-guided synthesis (SRe2L family): BN-statistics matching, EarlyLate schedules, init selection."""
