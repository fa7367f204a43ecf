"""The recover engine (SRe2L family): BN-statistics matching, batches of IPC indices, resume, the movement guard,
and the driver the methods on it share (their recipes live in stages/methods/<name>/recipe.py)."""
