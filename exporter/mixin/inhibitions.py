"""The example Alertmanager configuration ``alertmanager.yml``: a fixed routing tree and the inhibition
rules derived from the specs.

Rule 1 mutes the symptom under any cause; every :class:`~exporter.causes.Inhibition` of a spec's
``explains`` becomes one more rule, with its ``why`` as the comment. All of them hold only on the
same instance (``equal: [instance]``).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from exporter.causes import SPECS, CauseSpec, Inhibition
from exporter.mixin.alerts import LABEL_TEMPLATES, SYMPTOM, AlertSpec, alert_specs, scaled_for
from exporter.mixin.settings import MixinError, Settings, format_duration, header, parse_duration

ALERTMANAGER_FILE = "alertmanager.yml"
BUDGET_ALERT = "PhpFpmDown"
SCRAPE_INTERVAL = "15s"
EVALUATION_INTERVAL = "15s"
GROUP_WAIT = "15s"

_ROUTING = """\
route:
  receiver: oncall
  group_by: [{group_by}]
  # Budget for "a dead PHP-FPM pages within 2 minutes": scrape ({scrape}) + rule evaluation ({evaluation})
  # + for: {for_} + group_wait {group_wait} = at most {total}.
  group_wait: {group_wait}
  group_interval: 2m
  repeat_interval: 4h
  routes:
    - matchers: ['severity="warning"']
      receiver: tickets
      group_wait: 1m
      group_interval: 10m
      repeat_interval: 24h

receivers:
  - name: oncall
    webhook_configs:
      - url: http://127.0.0.1:5001/oncall
        send_resolved: true
  - name: tickets
    webhook_configs:
      - url: http://127.0.0.1:5001/tickets
        send_resolved: true
"""

_INTRO = """\
# Example Alertmanager configuration for badgateway-exporter's rules (rules/badgateway.rules.yml).
# Check it with: amtool check-config rules/alertmanager.yml
#
# One incident on one host is one page: alerts are grouped by instance, and the inhibition rules
# below keep only the root cause of a chain; they are derived from the `explains` of each cause in
# exporter/causes/ (the chain is explained in docs/alerting.md).
# Replace the two webhook receivers with your pager and ticket system.
"""


@dataclass(frozen=True)
class InhibitRule:
    """One ``inhibit_rules`` entry and why it holds."""

    source: tuple[str, ...]
    target: tuple[str, ...]
    why: str


def _matcher(label: str, values: tuple[str, ...]) -> str:
    if len(values) == 1:
        return f'{label}="{values[0]}"'
    return f'{label}=~"{"|".join(values)}"'


def _label_note(target: str, label: str, value: str, s: Settings) -> str:
    """Why only ``target{label="value"}`` is muted: what the target's label template says."""
    labels = dict(next((spec.page.labels for spec in SPECS if spec.alert == target), ()))
    if label not in labels:
        raise MixinError(
            f"an inhibition targets {target}{{{label}={value!r}}}, but {target} has no {label} label"
        )
    template = LABEL_TEMPLATES[labels[label]]
    if value not in template.values:
        values = "/".join(template.values)
        raise MixinError(f"an inhibition targets {target}{{{label}={value!r}}}, but {label} is {values}")
    return f'{target} carries {label}: {template.meaning(s)}; only {target}{{{label}="{value}"}} is muted.'


def _explained(
    spec: CauseSpec, inhibition: Inhibition, alerts: dict[str, AlertSpec], s: Settings
) -> InhibitRule:
    missing = [t for t in inhibition.target_alerts if t not in alerts]
    if missing or not inhibition.target_alerts:
        raise MixinError(f"{spec.alert} explains {', '.join(missing) or 'no alert'}: no such alert")
    targets = inhibition.target_alerts
    why = f"{spec.alert} explains {', '.join(targets)}: {(inhibition.why or spec.title).rstrip('.')}."
    notes = [_label_note(t, label, value, s) for t in targets for label, value in inhibition.target_labels]
    return InhibitRule(
        source=(_matcher("alertname", (spec.alert,)),),
        target=(
            _matcher("alertname", targets),
            *(_matcher(label, (value,)) for label, value in inhibition.target_labels),
        ),
        why=" ".join([why, *notes]),
    )


def inhibit_rules(settings: Settings) -> list[InhibitRule]:
    """Rule 1 (any cause mutes the symptom), then one rule per ``explains`` of the specs, in their order."""
    alerts = {a.name: a for a in alert_specs(settings)}
    first = InhibitRule(
        source=('category="cause"',),
        target=(_matcher("alertname", (SYMPTOM,)),),
        why=(
            'A cause explains the symptom: any cause alert (category="cause") on an instance mutes the'
            f" gateway-errors symptom there. {SYMPTOM} pages only when no cause is known."
        ),
    )
    return [first] + [
        _explained(spec, inhibition, alerts, settings) for spec in SPECS for inhibition in spec.explains
    ]


def _yaml_list(key: str, items: tuple[str, ...]) -> list[str]:
    quoted = ["'" + item.replace("'", "''") + "'" for item in items]
    flow = f"    {key}: [{', '.join(quoted)}]"
    if len(flow) <= 100:
        return [flow]
    return [f"    {key}:", *(f"      - {item}" for item in quoted)]


def _rule_lines(number: int, rule: InhibitRule, identity: tuple[str, ...]) -> list[str]:
    comment = textwrap.wrap(f"{number}. {rule.why}", width=96, break_on_hyphens=False)
    lines = [f"  # {comment[0]}", *(f"  #    {line}" for line in comment[1:])]
    first, *rest = _yaml_list("source_matchers", rule.source)
    lines.append("  - " + first.strip())
    lines += rest
    lines += _yaml_list("target_matchers", rule.target)
    lines.append(f"    equal: [{', '.join(identity)}]")
    return lines


def _routing(settings: Settings) -> str:
    budget = next(a for a in alert_specs(settings) if a.name == BUDGET_ALERT)
    for_seconds = round(scaled_for(budget, settings))
    total = sum(parse_duration(d) for d in (SCRAPE_INTERVAL, EVALUATION_INTERVAL, GROUP_WAIT)) + for_seconds
    return _ROUTING.format(
        scrape=SCRAPE_INTERVAL,
        evaluation=EVALUATION_INTERVAL,
        for_=format_duration(for_seconds),
        group_wait=GROUP_WAIT,
        total=format_duration(total),
        group_by=", ".join(settings.identity),
    )


def alertmanager_config(settings: Settings) -> str:
    """The text of ``alertmanager.yml``."""
    lines = [*header("rules", settings), "#", _INTRO, _routing(settings), "inhibit_rules:"]
    for number, rule in enumerate(inhibit_rules(settings), start=1):
        lines += _rule_lines(number, rule, settings.identity)
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
