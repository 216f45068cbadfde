"""selfsup: self-supervised representation learning, verified and fast."""

__version__ = "0.1.0"
