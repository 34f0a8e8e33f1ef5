"""Demonstrations, run from a checkout (not part of the installed package): ``python -m
demos.offline`` (``make demo-offline``) and ``python -m demos.e2e`` (``make demo``)."""
