"""`edgecompress profiles`: list, show and check device profiles.

Library errors (ProfileError) propagate; the main CLI group turns them into one line and exit code 2.
"""

from __future__ import annotations

import json
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

from compress.profiles.load import check_profile_file, list_profiles, load_profile
from compress.profiles.schema import DeviceProfile


def _console() -> Console:
    return Console()  # stdout, resolved at write time (so CliRunner captures it)


def _as_json(data: Any) -> str:
    return json.dumps(data, indent=2)


class _Dumper(yaml.SafeDumper):
    """Lists of scalars in flow style (``simd: [avx2, fma]``), like the profile files."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _as_yaml(profile: DeviceProfile) -> str:
    data = profile.model_dump(mode="json", exclude={"extends", "source"})
    if profile.generator_budgets is not None:  # what it writes over budgets, not every field's default
        data["generator_budgets"] = profile.generator_budgets.model_dump(mode="json", exclude_unset=True)
    header = f"# {profile.name}, fully resolved (from {profile.source})\n" if profile.source else ""
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def _runtime_cell(profile: DeviceProfile) -> str:
    rt = profile.runtime
    parts = [rt.name]
    if rt.provider:
        parts.append(rt.provider.removesuffix("ExecutionProvider") or rt.provider)
    parts.append(f"{rt.threads} threads" if rt.threads else "all cores")
    return "\n".join(parts)


def _hardware_cell(profile: DeviceProfile) -> str:
    hw = profile.hardware
    simd = " ".join(hw.simd) if hw.simd else "-"
    return f"{hw.arch.value}, {hw.cores} cores\n{simd}"


@click.group("profiles")
def profiles() -> None:
    """List, show and check device profiles (built-ins, `host`, or your own YAML files)."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved profiles as JSON.")
def list_command(as_json: bool) -> None:
    """List the built-in profiles and the detected `host` profile."""
    found = list_profiles(include_host=True)
    console = _console()
    if as_json:
        console.out(_as_json([p.model_dump(mode="json") for p in found]), highlight=False)
        return
    table = Table(title="Device profiles", title_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("description", overflow="fold")
    table.add_column("runtime")
    table.add_column("arch / simd")
    for p in found:
        table.add_row(p.name, p.description, _runtime_cell(p), _hardware_cell(p))
    console.print(table)


@profiles.command("show")
@click.argument("name_or_file")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def show_command(name_or_file: str, as_json: bool) -> None:
    """Show a profile (a built-in name, `host`, or a .yaml file) with `extends:` resolved."""
    profile = load_profile(name_or_file)
    console = _console()
    if as_json:
        console.out(_as_json(profile.model_dump(mode="json")), highlight=False)
    else:
        console.out(_as_yaml(profile), highlight=False, end="")


@profiles.command("check")
@click.argument("file")
def check_command(file: str) -> None:
    """Validate a profile file (and the files it extends)."""
    profile = check_profile_file(file)
    _console().print(f"{file}: valid profile {profile.name}", markup=False, highlight=False, soft_wrap=True)
