"""Frame fuzzing against a live relay process: generated and mutated protocol messages
from unauthenticated and authenticated connections, checked against liveness, answer, fan-out and
memory oracles. ``test_fuzz_relay.py`` is the short seeded run in ``make test``; ``python -m
tests.fuzz`` (``make fuzz``) is the long one.
"""
