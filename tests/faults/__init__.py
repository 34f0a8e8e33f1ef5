"""Fault injection for tests: a seeded, websocket-aware TCP proxy between clients and the relay."""
