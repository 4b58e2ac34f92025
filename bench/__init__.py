"""Load benchmarks for eXpServer, side by side with nginx (SPEC §6 budgets).

Run with ``python -m bench`` (or ``make bench``); ``python -m bench --help`` lists the options.
Never run by CI: numbers depend on the machine.
"""
