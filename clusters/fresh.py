"""The README's first command on a fresh machine: a bare Debian bookworm container (the compose cluster's
base image, nothing installed) gets Python from apt and a copy of the committed tree (``git archive HEAD``),
runs the README's first command exactly as written, then ``htex-ref sim examples/scenarios/smoke.toml``.

It uses the compose cluster's private ``dockerd`` and cached base image (``clusters.compose``) and stops
that daemon again; the container shares the host's network only to reach apt's mirror and PyPI (with the
host's CA bundle, which pip needs here). Must run as root::

    python -m clusters.fresh [--cache-dir DIR] [-- extra shell after the README's command]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from clusters.compose import (
    DEFAULT_CACHE_DIR,
    LOCAL_BASE_IMAGE,
    REPO,
    State,
    docker_cli,
    docker_env,
    down,
    ensure_base_image,
    ensure_dockerd,
    log,
)

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def readme_first_command() -> str:
    """The first line of the README's first ``bash`` block: the install-and-demo command."""
    match = re.search(r"```bash\n([^\n]+)\n", (REPO / "README.md").read_text())
    if match is None:
        raise SystemExit("README.md has no bash block")
    return match.group(1)


def container_script(then: str) -> str:
    return "\n".join([
        "set -euxo pipefail",
        "export DEBIAN_FRONTEND=noninteractive",
        "apt-get update -q && apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates",
        "mkdir /work && tar -xf /tree.tar -C /work && cd /work",
        readme_first_command(),
        then,
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("HTEX_COMPOSE_CACHE", DEFAULT_CACHE_DIR)))
    p.add_argument("then", nargs="*", help="shell to run after the README's command")
    args = p.parse_args(argv)
    then = " ".join(args.then) or ".venv/bin/htex-ref sim examples/scenarios/smoke.toml"
    with tempfile.TemporaryDirectory(prefix="htex-fresh-") as tmp:
        tree = Path(tmp) / "tree.tar"
        subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(tree), "HEAD"], check=True)
        state_dir = Path(tmp) / "state"
        try:
            host = ensure_dockerd(State(state_dir), args.cache_dir)
            ensure_base_image(host, args.cache_dir)
            cmd = [docker_cli(), "run", "--rm", "--network", "host", "-v", f"{tree}:/tree.tar:ro",
                   "-v", f"{CA_BUNDLE}:/host-ca.crt:ro", "-e", "PIP_CERT=/host-ca.crt",
                   LOCAL_BASE_IMAGE, "bash", "-c", container_script(then)]
            log(f"running the README's first command in a fresh {LOCAL_BASE_IMAGE} container, then: {then}")
            rc = subprocess.run(cmd, env={**os.environ, **docker_env(host)}, timeout=1200).returncode
        finally:
            down(None, state_dir)
    log(f"fresh-container check {'passed' if rc == 0 else f'FAILED (exit {rc})'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
