"""Pure decision logic: state machines and functions with no sockets, processes, threads or clocks.

Runtimes (real processes over ZeroMQ, or simcluster's simpy clock) feed these cores events and ``now``
and carry out the instructions they return.
"""
