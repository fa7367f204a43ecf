"""Seeds come from the top-level `seed` and the stage's name, so stages never share a random stream."""
import hashlib


def derive_seed(seed: int, *names: object) -> int:
    key = "/".join([str(seed), *map(str, names)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
