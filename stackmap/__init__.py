"""stackmap: a live, queryable map of an OpenStack cloud."""

__version__ = "0.1.0"
