"""argparse pieces shared by ``gendistill`` and its subcommands (kept here so imports point down from cli.py)."""

from __future__ import annotations

import argparse

from gendistill.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line ("gendistill generate: error: ...") and exit code 2."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the uninformative ones (None, False)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.required:
            return action.help
        return super()._get_help_string(action)
