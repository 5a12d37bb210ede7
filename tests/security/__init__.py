"""Regression tests for what an attacker or an unlucky operator once got through.

One module per kind of hole; docs/security.md lists each guarantee with the test that keeps it.
"""
