"""The ``inpctl`` command line: assembles the commands of ``inpctl/commands/`` into one app.

Each command parses its flags, builds a config, calls one function of :mod:`inp_former.workflow`
(or of :mod:`inp_former.benchmarks`) and renders the result; nothing here computes anything.
"""
from __future__ import annotations

import sys

import typer
from typer.core import TyperArgument, TyperCommand

from inp_former import __version__
from inpctl.commands.bench import bench_app
from inpctl.commands.evaluate import eval_command
from inpctl.commands.export import export_command
from inpctl.commands.predict import predict_command
from inpctl.commands.serve import serve_command
from inpctl.commands.train import train_command


class PlainArgument(TyperArgument):
    """A positional argument written the way usage lines write them: ``INPUTS...`` (``[NAME]`` when
    optional), without a type. Typer's own forms read ``{inputs}...`` in the usage line and
    ``inputs... <list[Path]>`` in the help."""

    def _plain_name(self) -> str:
        return (self.metavar or self.name or "").upper() + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        return self._plain_name() if self.required else f"[{self._plain_name()}]"

    def _rich_display_name(self) -> str:
        return self._plain_name()

    def display_type(self, ctx: typer.Context) -> str:
        return ""


class Command(TyperCommand):
    """Every ``inpctl`` command: its positional arguments are :class:`PlainArgument` s."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument:
                param.__class__ = PlainArgument   # same state, plainer display


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"inpctl {__version__}")
        raise typer.Exit()


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"max_content_width": 80},
                  help="INP-Former for industrial anomaly detection: train one model for all your categories, "
                       f"evaluate it with the paper's metrics, score new images, serve them, benchmark.\n\n"
                       f"Version {__version__}.")


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")) -> None:
    """The options before the command (``inpctl --version``)."""


app.command("train", cls=Command)(train_command)
app.command("eval", cls=Command)(eval_command)
app.command("predict", cls=Command)(predict_command)
app.command("export", cls=Command)(export_command)
app.add_typer(bench_app, name="bench")
app.command("serve", cls=Command)(serve_command)   # the web stack (serve extra) is imported only when it runs


def main() -> None:
    from inp_former.runtime import apply_env_defaults, configure_cpu_threads

    apply_env_defaults()       # before torch is imported: OpenMP reads its settings once
    configure_cpu_threads()    # threads that do not collapse when another process shares the cores
    app(prog_name="inpctl")


if __name__ == "__main__":
    sys.exit(main())
