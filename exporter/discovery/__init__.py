"""Zero-config discovery: read nginx's and PHP-FPM's own configuration to know what to watch.

Kept import-free on purpose: :mod:`exporter.config` imports :mod:`exporter.discovery.model`.
"""
