"""What a pool's listen.owner/group/mode mean for nginx's user, from the pool file alone; remembered
per pool object (the diagnosis asks every round), never mixed up between pools."""

from __future__ import annotations

from exporter.checks.analysis import predict_access
from exporter.discovery.model import Origin, PoolFacts, Setting


def pool(name: str, mode: str) -> PoolFacts:
    origin = Origin("file", f"/etc/php/8.2/fpm/pool.d/{name}.conf", 3, "pool file")
    return PoolFacts(
        name=name,
        file=origin.file or "",
        line=1,
        config_file="/etc/php/8.2/fpm/php-fpm.conf",
        settings={
            "listen": Setting(f"/run/php/{name}.sock", origin),
            "listen.owner": Setting("root", origin),
            "listen.group": Setting("root", origin),
            "listen.mode": Setting(mode, origin),
        },
    )


def test_the_mode_decides_for_a_user_outside_owner_and_group() -> None:
    closed, open_ = predict_access(pool("a", "0660"), "nobody"), predict_access(pool("b", "0666"), "nobody")
    assert closed is not None and open_ is not None
    assert (closed.allowed, open_.allowed) == (False, True)


def test_a_pool_asked_again_gets_the_same_answer_and_another_pool_its_own() -> None:
    first = pool("c", "0660")
    assert predict_access(first, "nobody") is predict_access(first, "nobody")
    changed = pool("c", "0666")  # the same pool after a reload: a new object, read anew
    again = predict_access(changed, "nobody")
    assert again is not None and again.allowed and again.pool is changed
