"""The release of account-ops: logged by every function and reported by the settings API."""

__version__ = "1.1.0"
