"""The ``inpctl`` command line: assembles the commands of ``inpctl/commands/`` into one app.

Each command parses its flags, builds a config, calls one function of :mod:`inp_former.workflow`
(or of :mod:`inp_former.benchmarks`) and renders the result; nothing here computes anything.
"""
from __future__ import annotations

import sys

import typer

from inpctl.commands.bench import bench_app
from inpctl.commands.evaluate import eval_command
from inpctl.commands.export import export_command
from inpctl.commands.predict import predict_command
from inpctl.commands.serve import serve_command
from inpctl.commands.train import train_command

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"max_content_width": 80},
                  help="INP-Former for industrial anomaly detection: train one model for all your categories, "
                       "evaluate it with the paper's metrics, score new images, serve them, benchmark.")
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("predict")(predict_command)
app.command("export")(export_command)
app.add_typer(bench_app, name="bench")
app.command("serve")(serve_command)   # the web stack (serve extra) is imported only when it runs


def main() -> None:
    from inp_former.runtime import apply_env_defaults, configure_cpu_threads

    apply_env_defaults()       # before torch is imported: OpenMP reads its settings once
    configure_cpu_threads()    # threads that do not collapse when another process shares the cores
    app(prog_name="inpctl")


if __name__ == "__main__":
    sys.exit(main())
