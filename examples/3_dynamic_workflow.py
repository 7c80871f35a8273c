"""Tasks that create tasks: the ALCF Parsl tutorial's 3_dynamic_workflow.py, for htex_ref.

A join app runs in this process (not on a worker) and returns the futures of other apps; its own
future resolves with their value once they are done. Join apps may call themselves.

    python examples/3_dynamic_workflow.py [--n 10]
"""

import argparse

import htex_ref
from htex_ref import join_app, python_app


@python_app
def add(*args: int) -> int:
    return sum(args)


@join_app
def fibonacci(n: int) -> object:
    if n == 0:
        return add()
    if n == 1:
        return add(1)
    return add(fibonacci(n - 1), fibonacci(n - 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args()

    with htex_ref.load():
        for i in range(args.n + 1):
            print(f"fibonacci({i}) = {fibonacci(i).result()}")


if __name__ == "__main__":
    main()
