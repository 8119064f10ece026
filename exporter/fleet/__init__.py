"""``badgateway-exporter fleet``: the on-call's view of a fleet, read from the Prometheus HTTP API.

- :mod:`~exporter.fleet.prometheus`: a small client of ``/api/v1/query`` and ``/api/v1/query_range``,
  every request under one deadline.
- :mod:`~exporter.fleet.view`: the hosts with an active cause (since when, the fix of
  ``badgateway_cause_info``) and the hosts whose exporter is down, from the answers.
- :mod:`~exporter.fleet.cli`: the command line, text and JSON output, exit codes.

It reads only Prometheus (any that holds the exporters' series: the server scraping them, a central
one fed by remote write or federation, Thanos Query, Mimir) and the cause specs; nothing of the
exporter's runtime.
"""
