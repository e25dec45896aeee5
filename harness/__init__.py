"""Run the product for real, shared by ``tests/`` and ``benchmarks/``.

Free ports and process groups (``processes``), ``bentoml serve`` servers (``servers``),
trained homes and the ``iris-train`` CLI (``training``, ``homes``, ``cli``), registry
state (``state``) and tool virtual environments (``venvs``). It imports the product and
nothing from ``tests`` or ``benchmarks``, which both import it and never each other
(``tests/unit/test_import_rules.py``). Not part of the wheel.
"""
