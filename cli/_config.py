"""`--config x.yaml`: a YAML file sets a command's defaults; flags override it."""

from __future__ import annotations

import inspect
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Callable, Optional, get_type_hints

import click
import typer
import yaml

from trajdistill.envs import ConfigError


class UsageError(ConfigError):
    """Bad input given on the command line."""


def config_option(cls: type, name: str, *decls: str, default: Any = MISSING, registry: Any = None,
                  **kw: Any) -> Any:
    """A typer option with the help and default of config field `name`: each setting is described once.

    A field without a default is a required option; one with a list or dict factory starts empty (the
    flag is repeatable). With `registry`, the help ends with the registry's names."""
    f = cls.__dataclass_fields__[name]
    if default is MISSING:
        default = f.default if f.default is not MISSING else [] if f.default_factory is not MISSING else ...
    return typer.Option(default, *decls, help=_field_help(f, registry), **kw)


def config_argument(cls: type, name: str, **kw: Any) -> Any:
    """A required typer argument with the help of config field `name`."""
    return typer.Argument(..., help=_field_help(cls.__dataclass_fields__[name], None), **kw)


def _field_help(f: Any, registry: Any) -> str:
    return registry_help(f.metadata["help"], registry) if registry is not None else f.metadata["help"]


# RolloutConfig field -> (the command's parameter, its type on the command line)
ROLLOUT_PARAMS: dict[str, tuple[str, Any]] = {
    "env": ("env", str), "split": ("split", str), "tasks": ("tasks", int), "max_steps": ("max_steps", int),
    "stop_on_repeat": ("stop_on_repeat", int), "concurrency": ("concurrency", int), "seed": ("seed", int),
    "temperature": ("temperature", float),
    "sandbox": ("sandbox", str), "env_params": ("env_param", list[str]), "skills": ("skills", list[str]),
    "preload_skills": ("preload_skills", bool), "skills_top_k": ("skills_top_k", int),
    "skills_examples": ("skills_examples", int), "trust": ("trust", list[str]),
    "allow_unsigned": ("allow_unsigned", bool), "executor": ("executor", str), "ray_address": ("ray_address", str),
    "ray_workers": ("ray_workers", int), "loop": ("loop", str),
}


def rollout_options(cls: type, *fields: str, **defaults: Any) -> Callable[[Callable], Callable]:
    """Give a command one option per rollout setting of config class `cls` (`fields`, or all of them).

    Each option has the field's help and default (`defaults` override one by field name); the command
    receives them as `rollout`, keywords for `cls`, and so never lists or translates them itself."""
    chosen = [name for name in ROLLOUT_PARAMS if name in (fields or ROLLOUT_PARAMS)]
    extra = [_rollout_parameter(cls, name, defaults) for name in chosen]

    def deco(fn: Callable) -> Callable:
        hints = get_type_hints(fn)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name])
               for p in inspect.signature(fn).parameters.values() if p.name != "rollout"]

        def command(**kw: Any) -> Any:
            rollout = {name: _as_setting(name, kw.pop(ROLLOUT_PARAMS[name][0])) for name in chosen}
            return fn(**kw, rollout=rollout)

        params = [*extra, *own]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        return command

    return deco


def _rollout_parameter(cls: type, name: str, defaults: dict[str, Any]) -> inspect.Parameter:
    param, kind = ROLLOUT_PARAMS[name]
    decls = [f"--{name.replace('_', '-')}"] if kind is bool else []  # a switch, not --x/--no-x
    option = {"trust": TrustOption, "allow_unsigned": AllowUnsignedOption}.get(name)
    if option is None:
        option = config_option(cls, name, *decls, **({"default": defaults[name]} if name in defaults else {}))
    annotation = Optional[kind] if option.default is None else kind
    return inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _as_setting(name: str, value: Any) -> Any:
    if name == "env_params":
        return env_params(value)
    return list(value) if isinstance(value, (list, tuple)) else value


def registry_help(lead: str, registry: Any) -> str:
    """Option help that lists a registry's names, plug-ins included (so it never goes stale)."""
    return f"{lead}: {', '.join(registry.names())} (plug-ins add more: entry-point group {registry.group})."


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
