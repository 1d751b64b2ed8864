"""diffusers' scheduler API (ConfigMixin + SchedulerMixin of diffusers 0.42), without importing diffusers.

A scheduler's ``__init__`` takes diffusers' explicit keyword arguments and is wrapped by
``register_to_config``, which records every argument (defaults included) in ``config``, a frozen dict that
also reads by attribute. ``save_config`` / ``save_pretrained`` write ``scheduler_config.json`` as diffusers
does; ``from_pretrained`` reads it back (a folder, ``subfolder=``; a Hub id through huggingface_hub when it
is installed); ``from_config`` builds a scheduler from any scheduler's config (ours or diffusers'), keeping
the keys another class would need as hidden entries, as diffusers does, so that configs round-trip.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from fastddpm.schedulers import diffusers_interop

CONFIG_NAME = "scheduler_config.json"
# Written as _diffusers_version: the diffusers release whose scheduler semantics these classes follow.
DIFFUSERS_VERSION = "0.42.1"


class FrozenConfig(OrderedDict):
    """A scheduler's config: a read-only dict whose keys also read as attributes (diffusers' FrozenDict)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["_frozen"] = True

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def _refuse(self, *args: Any, **kwargs: Any):
        raise TypeError(
            "a scheduler config is frozen: build a new scheduler with from_config(config, key=value)"
        )

    __delitem__ = setdefault = pop = popitem = update = clear = __setattr__ = __delattr__ = _refuse

    def __setitem__(self, key: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            self._refuse()
        super().__setitem__(key, value)

    def __reduce__(self):
        return (type(self), (list(self.items()),))


def register_to_config(init):
    """Wrap a scheduler's ``__init__``: record every argument in ``config`` (defaults included, listed under
    ``_use_default_values``); private ``_name`` keyword arguments go to the config only, as in diffusers."""

    signature = inspect.signature(init)

    @functools.wraps(init)
    def inner_init(self, *args: Any, **kwargs: Any) -> None:
        init_kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        private = {k: v for k, v in kwargs.items() if k.startswith("_")}
        parameters = {
            name: p.default
            for i, (name, p) in enumerate(signature.parameters.items())
            if i > 0 and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        recorded = dict(zip(parameters, args, strict=False))
        positional = set(recorded)
        recorded.update({k: init_kwargs.get(k, d) for k, d in parameters.items() if k not in recorded})
        defaulted = set(recorded) - set(init_kwargs) - positional
        if defaulted:
            recorded["_use_default_values"] = sorted(defaulted)
        self.register_to_config(**{**private, **recorded})
        init(self, *args, **init_kwargs)

    return inner_init


class ConfigMixin:
    """``config``, register_to_config, save/load of scheduler_config.json, from_config, compatibles."""

    config_name = CONFIG_NAME
    _compatibles: tuple[str, ...] = ()  # class names, resolved in fastddpm.schedulers
    _deprecated_kwargs: list[str] = []
    ignore_for_config: list[str] = []
    has_compatibles = True

    # ------------------------------------------------------------------------------------------ config
    def register_to_config(self, **kwargs: Any) -> None:
        if not diffusers_interop._registered:  # a scheduler being built: diffusers may be imported by now
            diffusers_interop.register_with_diffusers()
        kwargs.pop("kwargs", None)
        previous = self.__dict__.get("_internal_dict", {})
        self.__dict__["_internal_dict"] = FrozenConfig({**previous, **kwargs})

    @property
    def config(self) -> FrozenConfig:
        return self.__dict__["_internal_dict"]

    def __getattr__(self, name: str) -> Any:
        # diffusers reads config keys as attributes too, with a deprecation warning; so do we.
        internal = self.__dict__.get("_internal_dict")
        if internal is not None and name in internal:
            warnings.warn(
                f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object attribute is "
                f"deprecated; read 'scheduler.config.{name}' instead.",
                FutureWarning,
                stacklevel=2,
            )
            return internal[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def to_json_string(self) -> str:
        config = dict(self.config)
        config["_class_name"] = type(self).__name__
        config["_diffusers_version"] = DIFFUSERS_VERSION
        config.pop("_use_default_values", None)
        config.pop("_ignore_files", None)
        return json.dumps({k: _jsonable(v) for k, v in config.items()}, indent=2, sort_keys=True) + "\n"

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    # ------------------------------------------------------------------------------------- save / load
    def save_config(
        self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any
    ) -> None:
        """Write ``save_directory/scheduler_config.json`` (the folder is created). As in diffusers, the
        config then also holds ``_class_name`` and ``_diffusers_version``, so it equals the reloaded one's."""
        if push_to_hub:
            raise ValueError("save_config(push_to_hub=True) is not supported: fastddpm never uploads")
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_directory {str(folder)!r} is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.config_name).write_text(self.to_json_string(), encoding="utf-8")
        self.register_to_config(_class_name=type(self).__name__, _diffusers_version=DIFFUSERS_VERSION)

    def save_pretrained(
        self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any
    ) -> None:
        self.save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def load_config(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any] | tuple[dict[str, Any], dict[str, Any]]:
        """The config dict of a folder (or a json file, or a Hub id when huggingface_hub is installed)."""
        path = Path(pretrained_model_name_or_path)
        if path.is_file():
            file = path
        elif path.is_dir():
            file = path / subfolder / cls.config_name if subfolder else path / cls.config_name
            if not file.is_file():
                raise OSError(f"scheduler config {str(file)!r} does not exist")
        else:
            file = _hub_file(str(pretrained_model_name_or_path), cls.config_name, subfolder, kwargs)
        try:
            config = json.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise OSError(f"scheduler config {str(file)!r} is not readable JSON: {error}") from None
        return (config, kwargs) if return_unused_kwargs else config

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ):
        if pretrained_model_name_or_path is None:
            raise ValueError("from_pretrained needs a folder, a scheduler_config.json file or a Hub id")
        config, kwargs = cls.load_config(
            pretrained_model_name_or_path, subfolder=subfolder, return_unused_kwargs=True, **kwargs
        )
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | Any = None, return_unused_kwargs: bool = False, **kwargs
    ):
        """A scheduler of this class from ``config`` (a dict, or any scheduler with ``.config``, diffusers'
        included) with ``kwargs`` overriding it; keys other classes use are kept hidden in the config."""
        if config is None:
            raise ValueError("from_config needs a config as its first argument")
        if not isinstance(config, Mapping):
            config = getattr(config, "config", None)
            if not isinstance(config, Mapping):
                raise TypeError("from_config takes a config mapping or an object with a .config mapping")
        init_dict, unused, hidden = cls.extract_init_dict(dict(config), **kwargs)
        for key in cls._deprecated_kwargs:
            if key in unused:
                init_dict[key] = unused.pop(key)
        scheduler = cls(**init_dict)
        if "_class_name" in hidden:
            hidden["_class_name"] = cls.__name__
        scheduler.register_to_config(**hidden)
        unused = {**unused, **hidden}
        return (scheduler, unused) if return_unused_kwargs else scheduler

    @classmethod
    def _init_keys(cls) -> set[str]:
        parameters = inspect.signature(cls.__init__).parameters
        return {k for k, p in parameters.items() if k != "self" and p.kind != p.VAR_KEYWORD}

    @classmethod
    def extract_init_dict(cls, config: dict[str, Any], **kwargs: Any):
        """(init kwargs, unused kwargs, hidden config) as diffusers' ConfigMixin.extract_init_dict."""
        used_defaults = config.get("_use_default_values", [])
        config = {k: v for k, v in config.items() if k not in used_defaults and k != "_use_default_values"}
        original = dict(config)
        expected = cls._init_keys() - set(cls.ignore_for_config)
        other_keys = set()
        for other in cls._compatible_classes():
            other_keys |= other._init_keys()
        config = {k: v for k, v in config.items() if k not in other_keys - expected}
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        init_dict = {}
        for key in expected:
            if key in kwargs:
                config.pop(key, None)
                init_dict[key] = kwargs.pop(key)
            elif key in config:
                init_dict[key] = config.pop(key)
        unused = {**config, **kwargs}
        hidden = {k: v for k, v in original.items() if k not in init_dict}
        return init_dict, unused, hidden

    @classmethod
    def _compatible_classes(cls) -> list[type]:
        import fastddpm.schedulers as package

        names = dict.fromkeys([cls.__name__, *cls._compatibles])
        return [getattr(package, name) for name in names if hasattr(package, name)]

    @property
    def compatibles(self) -> list[type]:
        """The fastddpm scheduler classes that can be built from this one's config."""
        return self._compatible_classes()


class BaseOutput(OrderedDict):
    """diffusers' BaseOutput: a dataclass that is also an ordered dict of its non-None fields; indexing by
    name reads the dict, by position reads ``to_tuple()``; iterating yields the field names."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                super().__setitem__(field.name, value)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return dict(self.items())[key]
        return self.to_tuple()[key]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __reduce__(self):
        return type(self), tuple(getattr(self, f.name) for f in fields(self))

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self[k] for k in self.keys())


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return value  # json writes -Infinity, as diffusers does
    return value


def _hub_file(repo_id: str, filename: str, subfolder: str | None, kwargs: dict[str, Any]) -> str:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise OSError(
            f"{repo_id!r} is not a folder, and huggingface_hub is not installed to fetch it"
        ) from None
    hub_keys = ("cache_dir", "force_download", "local_files_only", "token", "revision")
    options = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
    try:
        return hf_hub_download(repo_id, filename, subfolder=subfolder, **options)
    except Exception as error:  # offline, missing repo, missing file: one line naming what was asked
        raise OSError(
            f"could not fetch {filename} of {repo_id!r} from the Hub: {type(error).__name__}"
        ) from None
