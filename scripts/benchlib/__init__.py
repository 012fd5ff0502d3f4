"""Modules of scripts/bench, the tlsplice benchmark harness."""
