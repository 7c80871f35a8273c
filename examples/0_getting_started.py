"""Hello from a Python app and a bash app: the ALCF Parsl tutorial's 0_getting_started.py, for htex_ref.

    python examples/0_getting_started.py
"""

import htex_ref
from htex_ref import bash_app, python_app


# A Python app runs a Python function on a worker process and returns a future of its value.
@python_app
def hello_python(message: str) -> str:
    return f"Hello {message}"


# A bash app returns a command line; a worker runs it with bash. Like Parsl, stdout= and stderr= name
# files (appended to by default; a ("path", "w") pair overwrites).
@bash_app
def hello_bash(message: str, stdout: object = ("hello-stdout", "w")) -> str:
    return f'echo "Hello {message}"'


# The default configuration starts one block of workers on this machine, one worker per CPU; to use
# the compute nodes of a cluster, load another configuration (see 4_hello_polaris.py).
with htex_ref.load():
    # Invoke the Python app and print its result.
    print(hello_python("World (Python)").result())

    # Invoke the bash app and wait for it; its output is in a file.
    hello_bash("World (Bash)").result()

with open("hello-stdout") as f:
    print(f.read(), end="")
