"""Routing, request and acceptance traces: formats, importers, statistics, synthesis."""
from specmoe.traces.requests import RequestTrace, load_requests
from specmoe.traces.routing import RoutingTrace, load, save, validate

__all__ = ["RequestTrace", "RoutingTrace", "load", "load_requests", "save", "validate"]
