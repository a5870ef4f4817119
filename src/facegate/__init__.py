"""facegate: a face-recognition gate for one workstation and one camera."""

__version__ = "0.1.0"
