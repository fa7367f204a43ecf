"""What every stage shares: validated params, errors, atomic outputs, cards, seeds, the CLI wrapper."""
