"""The adapters' Protocols (agent/daemon/ports.py) are what the real adapters and the
test fakes both implement: every Protocol method exists on each, with the same
parameter names and kinds, so a fake cannot drift from the adapter it stands in for."""

from __future__ import annotations

import inspect

import pytest

from agent.adapters.charon import CharonClient
from agent.adapters.connection_cache import ConnectionCache
from agent.adapters.links import LinkManager
from agent.adapters.mss_clamp import MssClamp
from agent.adapters.probe import Prober
from agent.daemon.fast_reroute import FastReroute, RouteSender
from agent.adapters.route_socket import RouteSocket
from agent.daemon.ports import CachePort, CharonPort, LinksPort, MssPort, ProberPort
from tests.unit.test_controller import FakeCharon, FakeLinks, FakeRouteSocket


def protocol_methods(protocol: type) -> list[str]:
    return [name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")]


def shape(function) -> list[tuple[str, inspect._ParameterKind]]:
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values() if p.name != "self"]


@pytest.mark.parametrize(
    ("protocol", "implementation"),
    [
        (CharonPort, CharonClient), (CharonPort, FakeCharon),
        (LinksPort, LinkManager), (LinksPort, FakeLinks),
        (MssPort, MssClamp), (CachePort, ConnectionCache), (ProberPort, Prober),
        (RouteSender, RouteSocket), (RouteSender, FakeRouteSocket),
    ],
    ids=lambda v: v.__name__,
)
def test_implementation_matches_its_protocol(protocol, implementation):
    methods = protocol_methods(protocol)
    assert methods, f"{protocol.__name__} declares no methods"
    for name in methods:
        assert hasattr(implementation, name), f"{implementation.__name__} lacks {name}"
        assert shape(getattr(implementation, name)) == shape(getattr(protocol, name)), (
            f"{implementation.__name__}.{name}{inspect.signature(getattr(implementation, name))} does not match "
            f"{protocol.__name__}.{name}{inspect.signature(getattr(protocol, name))}")


def test_the_loop_takes_its_adapters_through_the_protocols():
    """Edges (the pass's I/O) and FastReroute are typed by the Protocols, not the classes."""
    from agent.daemon.edges import Edges

    hints = inspect.get_annotations(Edges.__init__, eval_str=True)
    assert hints["charon"] is CharonPort
    assert "LinksPort" in str(hints["links"]) and "MssPort" in str(hints["mss"])
    assert inspect.get_annotations(FastReroute.__init__, eval_str=True)["sender"] is RouteSender
