"""DELT's own code: picking the real images its recover starts from (EarlyLate lives in the recover engine)."""
