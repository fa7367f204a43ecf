"""Training: one loop for teachers and students, losses per protocol, FKD soft-label files."""
