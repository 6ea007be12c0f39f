"""``manage.py forksafe_doctor``: the ``forksafe doctor`` report for this project's settings.

Same options and exit codes as the console script (0 fine, 1 problems, 2 bad
options); see :mod:`forksafe.doctor`.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser

from forksafe import doctor


class Command(BaseCommand):
    """Runs :func:`forksafe.doctor.run_doctor` in the ``manage.py`` process."""

    help = doctor.__doc__.splitlines()[0] if doctor.__doc__ else ""
    requires_system_checks: list[str] = []  # the report includes forksafe's own checks

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        """Django's parser, with bad options reported on one line (exit code 2)."""
        parser = super().create_parser(prog_name, subcommand, **kwargs)

        def error(message: str) -> NoReturn:
            if not parser.called_from_command_line:  # call_command(): Django's behaviour
                raise CommandError(f"Error: {message}")
            parser.exit(2, f"{parser.prog}: error: {message}\n")

        parser.error = error  # type: ignore[method-assign]
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        """The options of ``forksafe doctor`` (:func:`forksafe.doctor.add_arguments`)."""
        doctor.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        """Print the report; a report with problems ends in exit code 1."""
        try:
            report = doctor.run_options(options)
        except doctor.InputError as exc:
            raise CommandError(str(exc), returncode=2) from None
        self.stdout.write(report.to_json() if options["json"] else report.render(), ending="")
        if options["json"]:
            self.stdout.write("\n", ending="")
        if isinstance(report, doctor.FleetReport) and report.exit_code:
            raise CommandError("forksafe doctor: a limit of the fleet is exceeded", returncode=1)
        if isinstance(report, doctor.Report) and report.exit_code:
            raise CommandError(
                f"forksafe doctor found {len(report.problems)} problem(s)", returncode=1
            )
