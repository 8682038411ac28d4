"""adamodal: federated learning when clients are missing a modality."""

__version__ = "0.1.0"
