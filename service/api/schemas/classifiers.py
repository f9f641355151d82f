"""Bodies of /v1/classifiers: classifiers, their versions and aliases."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ClassifierSummaryPublic(BaseModel):
    name: str
    versions: list[str]
    latest: str = Field(description="the version the alias `latest` (a plain name) serves")
    default: bool
    aliases: dict[str, str] = Field(
        default_factory=dict, description="every alias with its version, `latest` included"
    )


class ClassifierListPublic(BaseModel):
    default: str
    classifiers: list[ClassifierSummaryPublic]


class ClassifierVersionPublic(BaseModel):
    version: str
    created_at: str | None
    method: str | None
    config: dict[str, Any]
    backbone: dict[str, Any]
    class_names: list[str]
    num_classes: int
    metrics: dict[str, Any]
    training: dict[str, Any]
    parity: dict[str, Any]
    loaded: bool
    open_vocabulary: bool = Field(
        default=False, description="labels outside class_names can be requested (encoded)"
    )
    aliases: list[str] = Field(default_factory=list, description="the aliases pointing at it")
    candidate: bool = Field(
        default=False,
        description="published by a tuning job that failed its gate, and no alias set to it "
        "since: `latest` does not follow it",
    )


class ClassifierPublic(BaseModel):
    name: str
    default: bool
    latest: str
    versions: list[ClassifierVersionPublic]
    aliases: dict[str, str] = Field(
        default_factory=dict, description="every alias with its version, `latest` included"
    )


class AliasCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="the version the alias points at (digits, or an alias)")

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class AliasPublic(BaseModel):
    alias: str
    version: str
