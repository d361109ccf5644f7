"""`--config x.yaml`: a YAML file sets a command's defaults; flags override it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import typer
import yaml

from trajdistill.envs import ConfigError


class UsageError(ConfigError):
    """Bad input given on the command line."""


def env_params(pairs: list[str]) -> dict:
    """`--env-param KEY=VALUE` pairs as env parameters."""
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--env-param must be KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = value
    return out


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value")
    return data


def _apply(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is None:
        return value
    data = load_yaml(value)
    # A section named after the command wins over top-level keys.
    section = data.get(ctx.info_name, {}) if isinstance(data.get(ctx.info_name), dict) else {}
    flat = {k.replace("-", "_"): v for k, v in {**data, **section}.items() if not isinstance(v, dict)}
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ConfigError(f"config file {value}: unknown setting(s) for '{ctx.info_name}': {', '.join(unknown)}")
    ctx.default_map = {**(ctx.default_map or {}), **flat}
    return value


ConfigOption = typer.Option(
    None, "--config", help="YAML file of defaults for this command; flags override it.",
    is_eager=True, callback=_apply, exists=False, dir_okay=False,
)


TrustOption = typer.Option(
    [], "--trust", help="Trust skill boxes signed by this key (ed25519:..., or a PEM key file), or the box whose "
                        "manifest digest is this sha256:...; repeatable. This machine's key and the keys in "
                        "the user config's trusted-keys file are always trusted.")
AllowUnsignedOption = typer.Option(
    False, "--allow-unsigned", help="Use skill boxes that no trusted key signed (for development only).")
SkillsTopKOption = typer.Option(
    2, "--skills-top-k", help="Box tools and skills listed per task: the k most relevant to it (BM25 over their "
                              "names, descriptions and source tasks); read_skill still reads any skill; 0 lists "
                              "them all.")
