"""The Flower App directory that `flwr run` sends to a deployment (docs/federate.md): one pyproject.toml that
names this package's ServerApp and ClientApp and the server's recipe.

    python -m reasondistill.federate.flower_app APP_DIR --recipe /srv/federation/federated.yaml
    flwr run APP_DIR SUPERLINK_CONNECTION --stream

`flwr run` zips the directory into a Flower App Bundle that the SuperLink and every SuperNode install, so it
holds nothing else: no code (reasondistill is installed on each machine beforehand) and not the recipe,
whose paths are the server's. The ServerApp reads the recipe on the server machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.metadata import version
from pathlib import Path

from reasondistill.core.logs import setup_logging

logger = logging.getLogger("reasondistill.federate.flower_app")  # not __name__: it also runs as __main__

APP_NAME = "reasondistill-federation"


def flower_app_pyproject(recipe: str) -> str:
    """The App's pyproject.toml; `recipe` is the run config's `recipe`: the server's federate recipe as the
    ServerApp opens it (absolute, relative to the SuperLink's working directory, or a packaged one)."""
    # a JSON string is a TOML basic string: quotes and backslashes in the path come out escaped
    return f"""# A Flower App for `flwr run` (python -m reasondistill.federate.flower_app; docs/federate.md).
[project]
name = "{APP_NAME}"
version = "{version("reasondistill")}"
description = "reasondistill federate: clients send top-k soft labels, the server distils the student"
license = "Apache-2.0"
dependencies = []  # none installed at run time: reasondistill is on every machine beforehand

[tool.flwr.app]
publisher = "reasondistill"

[tool.flwr.app.components]
serverapp = "reasondistill.federate.server_app:app"
clientapp = "reasondistill.federate.client_app:app"

[tool.flwr.app.config]
recipe = {json.dumps(recipe)}  # read on the server machine; `flwr run ... --run-config "recipe='PATH'"`
"""


def write_flower_app(directory: str | Path, recipe: str) -> Path:
    """Write the App into `directory` (created if needed); returns its pyproject.toml."""
    path = Path(directory) / "pyproject.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(flower_app_pyproject(recipe))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reasondistill.federate.flower_app",
        description="Write the Flower App directory that `flwr run` sends to a SuperLink and its SuperNodes.",
    )
    parser.add_argument("app_dir", help="Where to write the App's pyproject.toml.")
    parser.add_argument(
        "--recipe",
        default="recipes/demo/federated.yaml",
        help="The federate recipe as the ServerApp opens it on the server machine (default: the demo's).",
    )
    args = parser.parse_args(argv)
    setup_logging()
    path = write_flower_app(args.app_dir, args.recipe)
    logger.info(f"wrote {path}; run it with: flwr run {path.parent} SUPERLINK_CONNECTION --stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())
