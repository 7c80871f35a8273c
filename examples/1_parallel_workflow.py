"""Many tasks at once: the ALCF Parsl tutorial's 1_parallel_workflow.py, for htex_ref.

Create every future first, and only then wait for the results: the tasks run in parallel on the workers.

    python examples/1_parallel_workflow.py [--tasks 8] [--sleep 1]
"""

import argparse
import os
import time

import htex_ref
from htex_ref import python_app


@python_app
def hello_python(message: str, sleep_time: float = 1.0) -> str:
    import os
    import time

    time.sleep(sleep_time)
    return f"Hello {message} from worker process {os.getpid()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=1.0, help="seconds each task sleeps")
    args = parser.parse_args()

    with htex_ref.load() as session:
        workers = session.executors["htex_local"].max_workers_per_node
        start = time.monotonic()
        # Launch all tasks; each call returns at once with a future.
        futures = [hello_python(f"task {i}", args.sleep) for i in range(args.tasks)]
        # Then wait for each result.
        for future in futures:
            print(future.result())
        elapsed = time.monotonic() - start
    print(f"{args.tasks} tasks of {args.sleep} s on {workers} workers took {elapsed:.1f} s "
          f"(one after another: {args.tasks * args.sleep:.1f} s); this process is {os.getpid()}")


if __name__ == "__main__":
    main()
