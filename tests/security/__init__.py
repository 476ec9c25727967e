"""Tests of issue 10: the gateway under hostile input at its edge (bodies, heads, tokens, methods)."""
