from __future__ import annotations

import json
import platform

import click

from compress.cli._common import console


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_cmd(as_json):
    """List installed backends, their versions, execution providers, devices and CPU features."""
    from compress.reports.doctor import environment_report

    info = environment_report()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    con = console()
    con.print(f"edgecompress {info['edgecompress']} on {platform.system()} {info['machine']} — {info['cpu']}")
    con.print(f"CPU features: {', '.join(info['cpu_features']) or 'unknown'}; int8 dot product (VNNI/dotprod): "
              f"{'yes' if info['int8_dot_product'] else 'no'}")
    t = Table()
    for col in ("package", "version", "status", "details"):
        t.add_column(col)
    from rich.markup import escape

    for row in info["backends"]:  # escape: "edgecompress[tensorrt]" is not rich markup
        t.add_row(row["package"], row["version"] or "—", "ok" if row["version"] else "[yellow]missing[/]",
                  escape(row.get("details", "") or (row.get("install", "") if not row["version"] else "")))
    con.print(t)
