"""Load benchmarks for eXpServer, side by side with nginx, Caddy and HAProxy, case by case.

Run with ``python -m bench`` (or ``make bench``); ``python -m bench --help`` lists the options.
Never run by CI: numbers depend on the machine.
"""
