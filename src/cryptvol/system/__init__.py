"""The one place that runs external commands."""

from cryptvol.system.runner import CommandError, CommandResult, SecretFd, run, run_pipeline

__all__ = ["CommandError", "CommandResult", "SecretFd", "run", "run_pipeline"]
