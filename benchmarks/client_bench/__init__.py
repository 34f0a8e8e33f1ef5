"""Helpers of the ``client`` suite (``benchmarks/suites/client.py``): profiles, baselines, a relay.

Why a package of its own: the client suite needs real client profiles (SQLite files holding
signed documents and their projections), the original design's plain SQLite tables to compare
them with, and a real relay process to catch up from; each is a module here so the suite file
reads as the list of what is measured.
"""
