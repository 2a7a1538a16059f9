"""Every setting that exists is documented in the README with its environment name."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from ccproxy_core.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def env_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names: list[str] = []
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(env_names(annotation, env + "__"))
        else:
            names.append(env)
    return names


def test_every_setting_is_in_the_readme() -> None:
    text = README.read_text()
    missing = [name for name in env_names(Settings) if f"`{name}`" not in text]
    assert not missing, f"settings missing from README.md: {missing}"


def test_readme_names_the_two_commands() -> None:
    text = README.read_text()
    assert "make run" in text and "make test" in text
