"""simcluster: a simulated batch cluster that drives htex_ref's pure cores on a simpy clock.

A stub until its own issue; the cores it will drive live in ``htex_ref.core``.
"""
