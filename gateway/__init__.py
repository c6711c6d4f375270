"""gateway: a self-hosted sync server for LiveStore apps."""

__version__ = "0.1.0"
