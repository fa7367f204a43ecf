"""Parity runs: a method's official code beside ddpipe on the same inputs (docs/parity.md)."""
