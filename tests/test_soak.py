"""The soak of tests/soak.py at CI size: 20,000+ requests, faults, three users, anonymous."""

from __future__ import annotations

import typing

import pytest

from tests import soak

#: (backend, requests): 21,000 requests in all with the Apache run below.
_EMBEDDED = [("asyncio", 10_000), ("trio", 6_000)]


def _check(report: soak.Report) -> None:
    print()
    print(report.table())
    assert report.problems() == []
    assert report.served > report.requests // 2  # most requests did get through
    assert report.fault_connections and report.faults  # faults were really injected


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("backend", "requests"), _EMBEDDED)
def test_soak_embedded_servers(backend: str, requests: int) -> None:
    """200 tasks, three NTLM users and anonymous, 5 % faulty connections: no hang, no leak."""
    with soak.embedded_targets(fault_rate=0.05) as (targets, faults):
        report = soak.soak(
            targets, faults, requests=requests, seconds=60, concurrency=200, backend=backend
        )
    assert report.requests == requests
    _check(report)


@pytest.mark.timeout(150)
def test_soak_with_real_apache(apache: typing.Any) -> None:
    """The same soak with a fifth of the requests on real Apache (/ntlm-cb/, alice and bob)."""
    with soak.embedded_targets(fault_rate=0.05, weights=(0.4, 0.4)) as (targets, faults):
        targets.append(soak.apache_target(apache, 0.2))
        report = soak.soak(targets, faults, requests=5_000, seconds=60, concurrency=200)
    assert report.requests == 5_000 and report.per_target["apache"] > 500
    _check(report)
