"""badgateway-exporter: why is nginx answering 502/504, and what fixes it."""

__version__ = "0.1.0"
