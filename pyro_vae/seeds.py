"""The seeds of independent random streams, derived from one seed."""

SEED_STRIDE = 1_000_003  # a prime: seed * stride + index never repeats for indices below it


def derived_seed(seed: int, index: int) -> int:
    """The seed of stream ``index`` (an epoch's batch order, an image batch's samples)."""
    return (seed * SEED_STRIDE + index) % 2**63
