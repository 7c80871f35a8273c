"""``htex-ref bench``: throughput, latency, efficiency, bandwidth and start-up, optionally against Parsl."""
