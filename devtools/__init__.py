"""Development tools: the fake CD2 gateway, the demo data and the demo login's code.

Installed only with DEBUG on (settings), and never imported by production
code (tests/test_architecture.py fails if credentials/, institutions/ or
edpotential/ import it).
"""
