"""Helpers for the config files in configs/: loading a sibling config by path (config files are not an installed
package, so they must work from any working directory), and one parser for the variant argument of every
config's get_config(arg) (the text after ':' in --config configs/<name>.py:<arg>)."""

import importlib.util
import os
import types

import ml_collections

# A variant's default: its type is the type of the values it takes. A tuple of strings lists a variant's
# choices, the first being the default; each choice may also be written alone as a word.
VariantDefault = bool | int | float | str | tuple[str, ...]

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def sibling(config_file: str, name: str) -> types.ModuleType:
    """The config module `<name>.py` in the folder of `config_file` (pass `__file__`), loaded by path."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"imagen_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_arg(arg: str | None, **spec: VariantDefault) -> ml_collections.ConfigDict:
    """The variant values that `arg` selects, for a config whose variants and their defaults are `spec`.

    Modelled on big_vision's configs/common.py:parse_arg, so that every config file reads its argument the same
    way and rejects a mistyped variant with the same message. `arg` is a comma-separated list of items:
      name=value  sets a variant, the value converted to the type of its default (bools: true/false, 1/0,
                  yes/no; choices: one of them);
      name        sets a bool variant (a flag such as tiny) to True;
      choice      sets the variant with that choice among its `spec` tuple (e.g. sr32 for stage=("base16",
                  "sr32")), where big_vision takes a lone word as the first variant's value.
    Empty items are skipped; a later item overrides an earlier one; None or "" gives every default.

    Example: parse_arg("vq,tiny", tiny=False, vq=False, logistic=False) -> tiny=True, vq=True, logistic=False.
    Raises ValueError naming the unknown word (listing the known ones) or the bad value.
    """
    _check_spec(spec)
    values = {name: _default(default) for name, default in spec.items()}
    for item in (arg or "").split(","):
        if item:
            name, value = _parse_item(item, spec)
            values[name] = value
    return ml_collections.ConfigDict(values)


def _check_spec(spec: dict[str, VariantDefault]) -> None:
    """A spec whose words are ambiguous (a choice that is also a variant name or another variant's choice) is a
    bug of the config file: TypeError."""
    words = list(spec)
    for name, default in spec.items():
        if isinstance(default, tuple):
            if not default or not all(isinstance(choice, str) for choice in default):
                raise TypeError(f"Variant {name!r}: a tuple default lists string choices, got {default!r}.")
            words += default
    repeated = sorted({word for word in words if words.count(word) > 1})
    if repeated:
        raise TypeError(f"Ambiguous config variant word(s) {repeated}: each name and choice must be unique.")


def _default(default: VariantDefault) -> bool | int | float | str:
    """The value a variant takes when `arg` does not set it."""
    return default[0] if isinstance(default, tuple) else default


def _parse_item(item: str, spec: dict[str, VariantDefault]) -> tuple[str, bool | int | float | str]:
    """(variant name, value) of one item of `arg`: name=value, a bool variant's name, or a choice."""
    name, has_value, text = item.partition("=")
    if has_value:
        if name not in spec:
            raise ValueError(_unknown(name, spec))
        return name, _convert(name, text, spec[name])
    if name in spec:
        if isinstance(spec[name], bool):
            return name, True
        raise ValueError(f"Config variant {name!r} needs a value: {name}={_value_hint(spec[name])}.")
    for variant, default in spec.items():
        if isinstance(default, tuple) and name in default:
            return variant, name
    raise ValueError(_unknown(name, spec))


def _convert(name: str, text: str, default: VariantDefault) -> bool | int | float | str:
    """`text` as a value of the variant `name`: the type of its default, or one of its choices."""
    if isinstance(default, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
    elif isinstance(default, tuple):
        if text in default:
            return text
    elif isinstance(default, int | float):
        try:
            return type(default)(text)
        except ValueError:
            pass
    else:
        return text
    raise ValueError(f"Bad value {text!r} for config variant {name!r}: expected {_value_hint(default)}.")


def _value_hint(default: VariantDefault) -> str:
    """What a variant's value may be, for error messages."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, tuple):
        return " | ".join(default)
    return f"<{type(default).__name__}>"


def _unknown(word: str, spec: dict[str, VariantDefault]) -> str:
    """The one message for a word that names no variant: the known words, and how to combine them."""
    known = []
    for name, default in spec.items():
        if isinstance(default, bool):
            known.append(name)
        elif isinstance(default, tuple):
            known.append(f"{' | '.join(default)} (or {name}=...)")
        else:
            known.append(f"{name}={_value_hint(default)}")
    if not known:
        return f"Unknown config variant {word!r}; this config has no variants"
    message = f"Unknown config variant {word!r}; known variants: {', '.join(known)}"
    if len(spec) > 1:
        message += f" (combine with commas, e.g. :{_example(spec)})"
    return message


def _example(spec: dict[str, VariantDefault]) -> str:
    """An argument that sets the first two variants away from their defaults, e.g. "sr32,tiny"."""
    items = []
    for name, default in list(spec.items())[:2]:
        if isinstance(default, bool):
            items.append(name)
        elif isinstance(default, tuple):
            items.append(default[-1])
        else:
            items.append(f"{name}={default}")
    return ",".join(items)
