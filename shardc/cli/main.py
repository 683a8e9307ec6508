"""Entry point and error policy of the ``shardc`` command.

User mistakes (:class:`shardc.errors.ShardcError`) print one line on stderr and exit 2;
anything else is a bug: exit 1, traceback only with ``--debug``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from shardc.errors import ShardcError
from shardc.report.text import plain_safe
from shardc.version import __version__


class _Group(click.Group):
    """Turns exceptions into the exit codes scripts rely on."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except ShardcError as exc:
            if debug:
                raise
            click.echo(f"shardc: error: {plain_safe(exc.render())}", err=True)
            context = getattr(exc, "context", None)
            if context:
                click.echo(plain_safe(context, keep_newlines=True), err=True)
            ctx.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("shardc: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if debug:
                raise
            click.echo(
                f"shardc: internal error: {type(exc).__name__}: {plain_safe(exc)} "
                "(this is a bug in shardc; rerun with --debug for the traceback)",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shardc")
@click.option("--debug", is_flag=True, help="Show tracebacks for all errors.")
def cli(debug: bool) -> None:
    """shardc: shard an ONNX model across a described cluster."""


def _register() -> None:
    """Attach the subcommands; each lives in its own module."""
    import importlib

    for module, attr in (
        ("shardc.cli.analyse", "inspect_cmd"),
        ("shardc.cli.compile", "compile_cmd"),
        ("shardc.cli.topo", "topo"),
        ("shardc.cli.synth", "synth"),
        ("shardc.cli.check", "check_plan_cmd"),
        ("shardc.cli.verify", "verify_cmd"),
        ("shardc.cli.explain", "explain_cmd"),
        ("shardc.cli.launch", "launch_cmd"),
        ("shardc.cli.launch", "export_config_cmd"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        cli.add_command(getattr(mod, attr))


_register()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="shardc", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
