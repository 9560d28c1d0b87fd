"""Engines on a Ray cluster (cluster.backend = "ray"); see docs/cluster.md.

Importing this package does not import Ray: `runner` imports it when it first connects, so a daemon with
backend = "local" never loads it.
"""
