"""Scripts that start and stop the project's own test clusters (not part of the installed package).

``local_slurm``: a multi-node Slurm on this machine, one node per network namespace.
``compose``: a Docker Compose Slurm cluster built from ``containers/``.
Both write a :class:`clusters.info.ClusterInfo` JSON file that the cluster tests (``tests/cluster``) read.
"""
