"""``python -m xoron_pipelines``: the project's ``kedro run`` (same options), and beside it

- ``python -m xoron_pipelines chat --stage tools`` (or ``--export DIR``): chat with a trained
  stage or an export, one user message per stdin line;
- ``python -m xoron_pipelines status``: the trained stages, their checkpoints and MLflow runs.

(Kedro adds the same commands to ``kedro``: ``kedro chat``, ``kedro status``.)
"""

import sys
from pathlib import Path
from typing import Any

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

#: the project commands that are not ``kedro run`` (see xoron_pipelines.cli)
COMMANDS = ("chat", "status")


def main(*args, **kwargs) -> Any:
    package_name = Path(__file__).parent.name
    configure_project(package_name)

    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive

    argv = list(args[0]) if args else sys.argv[1:]
    if argv[:1] and argv[0] in COMMANDS:
        from xoron_pipelines.cli import cli

        return cli(argv, prog_name="python -m xoron_pipelines", **kwargs)
    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
