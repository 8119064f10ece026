"""The Prometheus rule file ``badgateway.rules.yml``: the recording rules, then the alerts of
:mod:`exporter.mixin.alerts` in two groups.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from exporter.mixin.alerts import AlertSpec, alert_specs, scaled_for
from exporter.mixin.inhibitions import ALERTMANAGER_FILE, alertmanager_config
from exporter.mixin.recording import recording_rules
from exporter.mixin.settings import Settings, format_duration, header

RULES_FILE = "badgateway.rules.yml"

_METRIC_RE = re.compile(r"(?<![\w:])badgateway_[a-z0-9_]+(?![\w:])")


def alert_rule(spec: AlertSpec, settings: Settings) -> dict[str, Any]:
    """One alert as Prometheus reads it."""
    rule: dict[str, Any] = {"alert": spec.name, "expr": spec.expr}
    for_seconds = scaled_for(spec, settings)
    if round(for_seconds) > 0:
        rule["for"] = format_duration(for_seconds)
    rule["labels"] = {
        "severity": spec.severity,
        "cause": spec.cause,
        "category": spec.category,
        **dict(spec.labels),
    }
    rule["annotations"] = {
        "summary": spec.summary,
        "description": spec.description,
        "runbook_url": f"{settings.runbook_base}/{spec.name}.md",
        "runbook_url_ru": f"{settings.runbook_base}/ru/{spec.name}.md",
    }
    return rule


def rule_groups(settings: Settings) -> dict[str, Any]:
    """The rule file as a mapping."""
    specs = alert_specs(settings)

    def rules(*categories: str) -> list[dict[str, Any]]:
        return [alert_rule(s, settings) for c in categories for s in specs if s.category == c]

    return {
        "groups": [
            {"name": "badgateway.recording", "rules": recording_rules(settings)},
            # The symptom is evaluated in the causes' group, right after them: a healed cause and the
            # symptom it inhibited then reach Alertmanager resolved together. In a group of its own,
            # evaluated at another moment of the interval, the symptom could still be firing, and no
            # longer inhibited, for up to one evaluation interval after its cause resolved.
            {"name": "badgateway.causes", "rules": rules("cause", "symptom")},
            {"name": "badgateway.warnings", "rules": rules("warning", "exporter")},
        ]
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def rules_file(settings: Settings) -> str:
    """The text of ``badgateway.rules.yml``."""
    body = yaml.dump(
        rule_groups(settings), Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True
    )
    return "\n".join(header("rules", settings)) + "\n" + body


def render(settings: Settings) -> dict[str, str]:
    """File name -> text of everything ``rules render`` writes into ``--out``."""
    return {RULES_FILE: rules_file(settings), ALERTMANAGER_FILE: alertmanager_config(settings)}


def metric_names(settings: Settings | None = None) -> set[str]:
    """Every ``badgateway_*`` series name the rendered rules read (expressions and templates).

    Recording rule names (``level:metric:operation``) are not included. A real-stack test can
    assert that each of these is in the exporter's ``/metrics`` output.
    """
    return set(_METRIC_RE.findall(rules_file(settings or Settings())))
