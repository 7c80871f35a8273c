"""Tasks that depend on each other: the ALCF Parsl tutorial's 2_sequential_workflow.py, for htex_ref.

Pass the future of one app to another app: the second runs only when the first is done, and receives
its value. Futures count as dependencies anywhere in the arguments, also inside lists such as Parsl's
``inputs=[...]``.

    python examples/2_sequential_workflow.py [--steps 5]
"""

import argparse

import htex_ref
from htex_ref import bash_app, python_app


@python_app
def generate(limit: int, seed: int) -> int:
    import random

    return random.Random(seed).randint(1, limit)


@python_app
def add(x: int, y: int) -> int:
    return x + y


@bash_app
def save(value: int, path: str) -> str:
    return f"echo {value} > {path}"


@bash_app
def double_file(path: str, inputs: list[object], stdout: object = None) -> str:
    # inputs holds the future of the app that wrote the file: it makes this app wait for it.
    return f"echo $(( $(cat {path}) * 2 ))"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with htex_ref.load():
        # A chain: each add waits for the one before it.
        total = generate(100, args.seed)
        first = total
        for i in range(1, args.steps + 1):
            total = add(total, i)
        print(f"start {first.result()}, after adding 1..{args.steps}: {total.result()}")

        # Files between bash apps: the second reads what the first wrote.
        saved = save(total, "total.txt")
        doubled = double_file("total.txt", inputs=[saved], stdout=("doubled.txt", "w"))
        doubled.result()
    with open("doubled.txt") as f:
        print(f"doubled by bash: {f.read().strip()}")


if __name__ == "__main__":
    main()
