"""Plain helpers the tests call (builders, clients, constants); no tests and no fixtures here.

Fixtures live in conftest.py files (tests/conftest.py when several folders use one, a
folder's own conftest.py otherwise), so no test imports a fixture.
"""
