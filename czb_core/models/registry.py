"""The model registry: one `model_runners/<name>/config.yaml` per model, discovered at run time.

Each config names the implementation class, a model card (what the app shows before any GPU time is
spent) and its variants, as cz-benchmarks' `models:` block did: variant -> weight URIs and resources.
Adding a model is adding a folder; nothing here lists models by name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional, cast

from omegaconf import OmegaConf

from czb_core.errors import ConfigError
from czb_core.types import ModelType

RUNNERS_ROOT = Path(__file__).resolve().parent.parent.parent / "model_runners"


@dataclass(frozen=True)
class ModelCard:
    organisms: list[str]
    expected_input: str
    embedding_dim: Optional[int]
    licence: str
    citation: str
    url: str = ""


MODEL_ROLE = "model"  # the weights entry that holds the model itself; other roles are its resources


def main_role(roles: Iterable[str]) -> Optional[str]:
    """The weights entry that holds the model: `model`, else the first (a variant with one entry); None for none."""
    roles = list(roles)
    return MODEL_ROLE if MODEL_ROLE in roles else next(iter(roles), None)


@dataclass(frozen=True)
class VariantConfig:
    name: str
    description: str = ""
    weights: dict[str, str] = field(default_factory=dict)  # role -> URI (s3://, https://, path)
    weights_from: str = ""  # where to get weights that have no download: they must be given (--weights)
    weights_sha256: dict[str, str] = field(default_factory=dict)  # relative path -> expected sha256
    weights_size_mb: Optional[float] = None
    params: dict[str, Any] = field(default_factory=dict)  # variant defaults, overridable per run
    resources: dict[str, Any] = field(default_factory=dict)
    embedding_dim: Optional[int] = None  # where it differs from the card's (scVI's `fit`: 10, Census: 50)

    @property
    def needs_weights(self) -> bool:
        return bool(self.weights) or bool(self.weights_from)

    @property
    def main_weights_uri(self) -> Optional[str]:
        """The configured address of the model entry (None: no download, or no weights)."""
        role = main_role(self.weights)
        return None if role is None else self.weights[role]


@dataclass(frozen=True)
class ModelConfig:
    name: str
    display_name: str
    model_type: ModelType
    implementation: str  # "ClassName" in model_runners/<name>/model.py
    description: str
    card: ModelCard
    variants: dict[str, VariantConfig]
    default_variant: str

    def variant(self, name: Optional[str] = None) -> VariantConfig:
        key = name or self.default_variant
        if key not in self.variants:
            raise ConfigError(
                f"model {self.name!r} has no variant {key!r}; choose one of: {', '.join(self.variants)}"
            )
        return self.variants[key]

    def embedding_dim(self, variant: Optional[str] = None) -> Optional[int]:
        """The embedding size of `variant`: its own where the config gives one, else the card's."""
        return self.variant(variant).embedding_dim or self.card.embedding_dim

    def load_implementation(self) -> Any:  # the runner class, a BaseModelImplementation found by its name
        try:
            module = importlib.import_module(f"model_runners.{self.name}.model")
        except ImportError as exc:  # a runner that cannot be imported must not take the other models down
            raise ConfigError(f"model_runners/{self.name}/model.py cannot be imported ({exc})") from exc
        try:
            return getattr(module, self.implementation)
        except AttributeError:
            raise ConfigError(
                f"model_runners/{self.name}/model.py has no class {self.implementation!r}"
            ) from None


def _parse(name: str, path: Path) -> ModelConfig:
    try:
        raw = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(path), resolve=True))
        card = raw.get("card", {})
        variants = {
            vname: VariantConfig(name=vname, **(vconf or {}))
            for vname, vconf in raw["models"].items()
        }
        return ModelConfig(
            name=name,
            display_name=raw.get("display_name", name),
            model_type=ModelType(raw["model_type"]),
            implementation=raw["implementation"],
            description=raw.get("description", ""),
            card=ModelCard(
                organisms=list(card.get("organisms", [])),
                expected_input=card.get("expected_input", ""),
                embedding_dim=card.get("embedding_dim"),
                licence=card.get("licence", ""),
                citation=card.get("citation", ""),
                url=card.get("url", ""),
            ),
            variants=variants,
            default_variant=raw.get("default_variant") or next(iter(variants)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: malformed model config ({exc})") from exc


@lru_cache(maxsize=4)
def discover_models(root: Path = RUNNERS_ROOT) -> dict[str, ModelConfig]:
    """Every `<root>/<name>/config.yaml`, by folder name, in alphabetical order (the PCA baseline first)."""
    found = {p.parent.name: _parse(p.parent.name, p) for p in sorted(root.glob("*/config.yaml"))}
    return dict(sorted(found.items(), key=lambda kv: (kv[1].model_type != ModelType.BASELINE, kv[0])))


def get_model(name: str) -> ModelConfig:
    models = discover_models()
    if name not in models:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(models)}")
    return models[name]
