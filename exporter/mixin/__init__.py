"""Build-time generators, apart from the runtime: the alert rules, the Alertmanager example, the runbook
index and the Grafana dashboards, all rendered from :data:`exporter.causes.SPECS` and one
:class:`~exporter.mixin.settings.Settings` (like a monitoring mixin).

- :mod:`~exporter.mixin.settings`: the settings, the Prometheus duration parser, :class:`MixinError`.
- :mod:`~exporter.mixin.templates`: pieces of Prometheus alert templates and PromQL literals.
- :mod:`~exporter.mixin.alerts`: the alerts as data (one per cause spec, then a table of the others).
- :mod:`~exporter.mixin.recording`: the recording rules the dashboards read.
- :mod:`~exporter.mixin.rules`: ``badgateway.rules.yml``.
- :mod:`~exporter.mixin.inhibitions`: ``alertmanager.yml`` and its inhibition rules, from the specs' ``explains``.
- :mod:`~exporter.mixin.runbooks`: ``docs/runbooks/README.md``.
- :mod:`~exporter.mixin.panels`, :mod:`~exporter.mixin.rows`, :mod:`~exporter.mixin.dashboards`: the Grafana JSON.
- :mod:`~exporter.mixin.fleet_dashboard`: the fleet dashboard (hosts and their causes, top hosts, top error kinds).
- :mod:`~exporter.mixin.cli`: ``badgateway-exporter rules …`` and ``badgateway-exporter dashboards …``.

The mixin imports :mod:`exporter.causes` and nothing of the runtime (checks, rounds, diagnosis,
server, configuration): rendering needs no host.
"""
