"""``python -m htex_ref``: the ``htex-ref`` command."""

from htex_ref.cli import main

if __name__ == "__main__":
    main()
