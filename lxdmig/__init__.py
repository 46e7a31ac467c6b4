"""lxdmig: live migration of running system containers with CRIU."""

__version__ = "0.1.0"
