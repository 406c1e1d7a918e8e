"""tcpsleuth: find out why TCP delays requests on busy servers, prove it, and say how to stop it."""

__version__ = "0.1.0"
