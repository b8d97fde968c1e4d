"""Resolving a user's ``package.module:callable`` reference (models, data sets, tasks) and the registries of the
extension points (criteria, allocation rules): one place, no torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from autoprune.errors import ModelError, first_problem

__all__ = ["NoOptions", "Registry", "import_callable", "import_reference", "validated_options"]

T = TypeVar("T")


class NoOptions(BaseModel):
    """The options of an extension that takes none (a sampler, a granularity): any key given is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validated_options(model: type[BaseModel], options: dict[str, Any], field: str, owner: str) -> BaseModel:
    """``options`` validated by an extension's own pydantic model; a ValueError names the first wrong one as
    ``field.key`` and the extension (``owner``)."""
    try:
        return model.model_validate(options)
    except ValidationError as err:
        where, msg = first_problem(err, "?")
        raise ValueError(f"{field}.{where}: {msg} ({owner})") from None


def import_reference(ref: str, what: str) -> Any:
    """The attribute ``ref`` names (``package.module:attr``); a ValueError names the reference when the module
    does not import or lacks it."""
    mod_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except Exception as err:  # any import-time failure of user code is the user's input problem
        raise ValueError(f"{what} '{ref}': cannot import module '{mod_name}' ({err})") from None
    if not hasattr(module, attr):
        raise ValueError(f"{what} '{ref}': module '{mod_name}' has no '{attr}'")
    return getattr(module, attr)


def import_callable(ref: str, what: str) -> Callable[..., Any]:
    """Resolve ``package.module:callable``; a clear error (ModelError) names the reference when it fails."""
    mod_name, _, attr = ref.partition(":")
    try:
        fn = import_reference(ref, what)
    except ValueError as err:
        if "cannot import" in str(err):
            raise ModelError(str(err)) from None
        fn = None
    if not callable(fn):
        raise ModelError(f"{what} '{ref}': module '{mod_name}' has no callable '{attr}'")
    return fn


class Registry(dict[str, type[T]], Generic[T]):
    """Subclasses of one extension point's base, by name. ``register("name")`` is a class decorator; ``resolve``
    finds a registered name (after importing the modules that register the built-ins) or a user's
    ``package.module:Class``."""

    def __init__(self, kind: str, base: type, builtin_modules: tuple[str, ...] = ()) -> None:  # (an abstract base)
        super().__init__()
        self.kind, self.base, self.builtin_modules = kind, base, builtin_modules

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: make a subclass of the base available under ``name``."""
        def add(cls: type[T]) -> type[T]:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"register('{name}'): {cls!r} is not a {self.base.__name__} subclass")
            cls.name = name  # type: ignore[attr-defined]
            self[name] = cls
            return cls
        return add

    def resolve(self, name: str) -> type[T]:
        """The class registered as ``name``, or the one ``package.module:Class`` names; a ValueError says what is
        wrong (unknown name, a module that does not import, a class that is not a subclass of the base)."""
        for module in self.builtin_modules:
            importlib.import_module(module)
        if name in self:
            return self[name]
        if ":" not in name:
            raise ValueError(f"unknown {self.kind} '{name}' (registered: {', '.join(self) or 'none'}; or "
                             "package.module:Class)")
        cls = import_reference(name, self.kind)
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise ValueError(f"{self.kind} '{name}': '{name.partition(':')[2]}' in {name.partition(':')[0]} is not "
                             f"a subclass of {self.base.__name__}")
        return cast("type[T]", cls)

    def claim(self, name: str, chosen: str | None, claimants: tuple[type[T], ...]) -> T | None:
        """For an extension point whose built-ins recognise names by their form (model adapters, data sources):
        an instance of the class ``chosen`` names (see :meth:`resolve`), else of the first of ``claimants`` whose
        ``matches(name)`` is true, else None."""
        if chosen is not None:
            return self.resolve(chosen)()
        for cls in claimants:
            found = cls()
            if found.matches(name):  # type: ignore[attr-defined]
                return found
        return None
