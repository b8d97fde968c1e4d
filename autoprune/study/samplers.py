"""The sampler extension point: a :class:`SamplerFactory` builds an Optuna sampler for a search, registered by
name (``@register_sampler("name")``) or given as ``package.module:Class`` in the space's ``sampler:``; its
``sampler_options:`` are validated by the factory's own pydantic model, so a wrong option is one line naming it.
The built-ins (tpe, nsga2, random, gp, rl, evolution) are registered here the same way a user's would be."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import optuna
from optuna.distributions import BaseDistribution
from pydantic import BaseModel, ConfigDict, Field

from autoprune.config.sampling import SampleContext
from autoprune.errors import ConfigError
from autoprune.plugins import NoOptions, Registry, validated_options
from autoprune.study.sampler import PerTargetTPE, StaticSpaceTPE

__all__ = ["SAMPLERS", "EvolutionOptions", "NoOptions", "SamplerFactory", "SamplerRequest", "make_sampler",
           "register_sampler", "sampler_factory"]


@dataclass(frozen=True)
class SamplerRequest:
    """What a search hands a sampler factory: the seed, every searched parameter's distribution, and the space's
    facts a sampler may use (grid of targets, sampling context, preference offset, layer grouping)."""

    seed: int
    search_space: dict[str, BaseDistribution]
    parallel: bool = False  # several workers share the study (TPE's constant liar)
    targets: list[float] = field(default_factory=list)  # targets.grid (empty for a range)
    ctx: SampleContext | None = None
    offset: float = 2.0  # preference offsets lie in [-offset, offset]
    group: str = "unit"  # layers.group
    startup: int = 10  # random trials (per target for a grid) before a model-based sampler models them
    budget: str = "equal"  # targets.budget: how a grid's trials are shared (see sampler.assign_target)


class SamplerFactory(ABC):
    """Builds the Optuna sampler of a search. ``options`` is the pydantic model of its ``sampler_options``."""

    name: ClassVar[str] = ""
    options: ClassVar[type[BaseModel]] = NoOptions

    @abstractmethod
    def create(self, request: SamplerRequest, options: Any) -> optuna.samplers.BaseSampler:
        """The sampler for ``request``; ``options`` is an instance of :attr:`options`."""


SAMPLERS: Registry[SamplerFactory] = Registry("sampler", SamplerFactory, ("autoprune.study.samplers",))
register_sampler = SAMPLERS.register


def sampler_factory(name: str, options: dict[str, Any] | None = None) -> tuple[SamplerFactory, BaseModel]:
    """The factory registered as ``name`` (or ``package.module:Class``) with its validated options; a ValueError
    names the unknown sampler or the first wrong option."""
    factory = SAMPLERS.resolve(name)()
    return factory, validated_options(factory.options, options or {}, "sampler_options", f"sampler {name}")


def make_sampler(name: str, seed: int, search_space: dict[str, BaseDistribution], parallel: bool = False,
                 targets: list[float] | None = None, ctx: SampleContext | None = None, offset: float = 2.0,
                 group: str = "unit", startup: int = 10, options: dict[str, Any] | None = None,
                 budget: str = "equal") -> optuna.samplers.BaseSampler:
    """The sampler ``name`` (a registered factory or ``package.module:Class``) for a search, seeded; a wrong name
    or option is a ConfigError."""
    try:
        factory, opts = sampler_factory(name, options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return factory.create(SamplerRequest(seed, search_space, parallel, list(targets or []), ctx, offset, group,
                                         startup, budget), opts)


@register_sampler("tpe")
class TPEFactory(SamplerFactory):
    """Multivariate TPE over the space known up front; per target for a grid of targets (the default)."""

    def create(self, request: SamplerRequest, options: Any) -> optuna.samplers.BaseSampler:
        """TPE with ``startup`` random trials, the constant liar when several workers share the study."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # `constant_liar` is flagged experimental
            if request.targets and "target" in request.search_space:
                return PerTargetTPE(request.search_space, request.targets, request.budget, seed=request.seed,
                                    n_startup_trials=request.startup, constant_liar=request.parallel)
            return StaticSpaceTPE(request.search_space, seed=request.seed, n_startup_trials=request.startup,
                                  constant_liar=request.parallel)


@register_sampler("random")
class RandomFactory(SamplerFactory):
    """Uniform random candidates (the control a search must beat)."""

    def create(self, request: SamplerRequest, options: Any) -> optuna.samplers.BaseSampler:
        """Optuna's RandomSampler."""
        return optuna.samplers.RandomSampler(seed=request.seed)


class NSGA2Options(BaseModel):
    """NSGA-II's population per generation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    population: int = Field(default=20, ge=2)


@register_sampler("nsga2")
class NSGA2Factory(SamplerFactory):
    """Optuna's NSGA-II over (metric, size)."""

    options = NSGA2Options

    def create(self, request: SamplerRequest, options: Any) -> optuna.samplers.BaseSampler:
        """NSGA-II with ``population`` candidates per generation."""
        return optuna.samplers.NSGAIISampler(seed=request.seed, population_size=options.population)


@register_sampler("gp")
class GPFactory(SamplerFactory):
    """Optuna's Gaussian-process sampler."""

    def create(self, request: SamplerRequest, options: Any) -> optuna.samplers.BaseSampler:
        """GPSampler, quiet about independently sampled params."""
        return optuna.samplers.GPSampler(seed=request.seed, warn_independent_sampling=False)


@register_sampler("rl")
class RLFactory(SamplerFactory):
    """The reinforcement-learning controller (AMC-style policy gradient over the same params)."""

    def create(self, request: SamplerRequest, options: Any) -> optuna.samplers.BaseSampler:
        """The RL controller."""
        from autoprune.study.controller import RLControllerSampler

        return RLControllerSampler(request.search_space, seed=request.seed)


class EvolutionOptions(BaseModel):
    """The evolutionary sampler's knobs: ``population`` best trials per size a parent is drawn from (1 = always
    the best, EvoPress's (1 + λ) search), up to ``max_moves`` moves per child, and the probability ``redraw`` of
    re-drawing each recipe choice."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    population: int = Field(default=8, ge=1)
    max_moves: int = Field(default=3, ge=1)
    redraw: float = Field(default=0.1, ge=0.0, le=1.0)


@register_sampler("evolution")
class EvolutionFactory(SamplerFactory):
    """Tournament selection per target + sparsity-moving mutations (see :mod:`autoprune.study.evolution`)."""

    options = EvolutionOptions

    def create(self, request: SamplerRequest, options: Any) -> optuna.samplers.BaseSampler:
        """The evolutionary sampler; it needs a grid of targets and the sampling context."""
        from autoprune.study.evolution import EvolutionSampler

        if request.ctx is None or not request.targets:
            raise ConfigError("sampler evolution needs a grid of targets (targets.grid) and projected preferences")
        return EvolutionSampler(request.search_space, request.ctx, request.targets, request.offset,
                                seed=request.seed, group=request.group, population=options.population,
                                max_moves=options.max_moves, redraw=options.redraw, budget=request.budget,
                                floor=request.startup)
