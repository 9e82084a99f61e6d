"""xoron-pipelines: declarative LLM training with Kedro."""

from xoron_pipelines import console as _console

__version__ = "0.1.0"

# the project's warning policy (a few third-party warnings, each with its reason), before Kedro or
# a plugin imports the libraries that issue them
_console.install()
