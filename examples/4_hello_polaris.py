"""Run hello_affinity on every GPU of a Polaris node: the ALCF Parsl tutorial's 4_hello_polaris.py, for htex_ref.

On Polaris (from a login node; the job is submitted with qsub, and the script waits for it)::

    python examples/4_hello_polaris.py --account MYPROJECT --queue debug \\
        --worker-init "source $PWD/venv/bin/activate" --program $PWD/hello_affinity

Here, with LocalProvider standing in for PBS Pro and four made-up GPUs::

    python examples/4_hello_polaris.py --local

``hello_affinity`` (from ALCF's GettingStarted repository) prints the CPUs and GPU each rank sees.
Without ``--program`` a shell stand-in prints the same facts. The tasks wait for each other to start
(at most a minute), so that all of them run at once, each on a worker of its own: one per GPU.
Each task's output goes to ``output/hello_{i}.stdout``.
"""

from __future__ import annotations

import argparse
import os
import shlex

import htex_ref
from htex_ref import bash_app

from polaris_config import GPUS_PER_NODE, local_config, polaris_config

STAND_IN = (
    'echo "host=$(hostname) pid=$$ CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset} '
    '$(grep Cpus_allowed_list /proc/self/status | tr -d "\\t")"'
)


@bash_app
def hello_affinity(program: str, started_dir: str, index: int, together: int,
                   stdout: object = None, stderr: object = None) -> str:
    started = shlex.quote(f"{started_dir}/started.{index}")
    pattern = shlex.quote(started_dir) + "/started.*"
    # Wait (at most 60 s) until `together` tasks have started, so each holds its own worker.
    rendezvous = (f"touch {started}; for _ in $(seq 600); do "
                  f"[ $(ls {pattern} 2>/dev/null | wc -l) -ge {together} ] && break; sleep 0.1; done")
    return f"{rendezvous}; {program}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="run here, with LocalProvider and fake GPUs")
    parser.add_argument("--account", help="the ALCF project to charge (on Polaris)")
    parser.add_argument("--queue", default="debug")
    parser.add_argument("--walltime", default="0:10:00")
    parser.add_argument("--worker-init", default="", help="shell lines that activate htex_ref on the nodes")
    parser.add_argument("--program", default=STAND_IN, help="the command each task runs (default: a stand-in)")
    parser.add_argument("--tasks", type=int, default=GPUS_PER_NODE)
    parser.add_argument("--output-dir", default="output")
    args = parser.parse_args()

    if args.local:
        config = local_config()
    elif args.account:
        config = polaris_config(account=args.account, queue=args.queue, walltime=args.walltime,
                                worker_init=args.worker_init)
    else:
        parser.error("give --account (on Polaris) or --local")

    output = os.path.abspath(args.output_dir)
    os.makedirs(output, exist_ok=True)
    started_dir = os.path.join(output, "started")
    os.makedirs(started_dir, exist_ok=True)
    together = min(args.tasks, GPUS_PER_NODE)
    with htex_ref.load(config):
        futures = [
            hello_affinity(args.program, started_dir, i, together,
                           stdout=(f"{output}/hello_{i}.stdout", "w"), stderr=(f"{output}/hello_{i}.stderr", "w"))
            for i in range(args.tasks)
        ]
        for future in futures:
            future.result()
    for i in range(args.tasks):
        with open(f"{output}/hello_{i}.stdout") as f:
            print(f"task {i}: {f.read().strip()}")


if __name__ == "__main__":
    main()
