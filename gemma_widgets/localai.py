"""LocalAI model definitions for an OpenVINO export: write one, read it back, check it, load it.

LocalAI serves a model described by a YAML file in its models folder. For an OpenVINO IR run by
its ``transformers`` backend through optimum-intel, the definition the seed shows is::

    name: gemma-2-9b-it-ov
    backend: transformers
    parameters:
      model: fakezeta/gemma-2-9b-it-ov-int4   # a hub id or a local IR folder
    context_size: 8192
    type: OVModelForCausalLM
    template:
      use_tokenizer_template: true            # the chat template saved with the tokenizer

>>> spec = LocalAIModel.for_export("gemma-270m-ov", "/models/gemma-270m-ov")  # doctest: +SKIP
>>> spec.write("/models/gemma-270m-ov.yaml"); read("/models/gemma-270m-ov.yaml") == spec  # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.host.files import read_limited, write_atomic
from gemma_widgets.loading import LoadedModel, load_model
from gemma_widgets.templates import END_OF_TURN

BACKEND = "transformers"
OV_TYPE = "OVModelForCausalLM"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class LocalAIDefinitionError(GemmaWidgetsError, ValueError):
    """A LocalAI model definition is missing a field or has a wrong one."""


@dataclass(frozen=True)
class LocalAIModel:
    """One LocalAI model definition for an OpenVINO IR served by the transformers backend."""

    name: str
    model: str  # parameters.model: a hub id or a local folder with openvino_model.xml
    context_size: int
    backend: str = BACKEND
    type: str = OV_TYPE
    use_tokenizer_template: bool = True
    stopwords: tuple[str, ...] = field(default=(END_OF_TURN,))

    @classmethod
    def for_export(cls, name: str, folder: str | Path) -> LocalAIModel:
        """The definition for an exported IR ``folder`` (context size from its config.json)."""
        folder = Path(folder).expanduser().resolve()
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise LocalAIDefinitionError(f"{folder} has no readable config.json: export it first") from exc
        config = config.get("text_config", config)
        spec = cls(name, str(folder), int(config.get("max_position_embeddings") or 8192))
        check_model_folder(spec)
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The definition as LocalAI reads it (nested like the YAML)."""
        data: dict[str, Any] = {
            "name": self.name,
            "backend": self.backend,
            "parameters": {"model": self.model},
            "context_size": self.context_size,
            "type": self.type,
            "template": {"use_tokenizer_template": self.use_tokenizer_template},
        }
        if self.stopwords:
            data["stopwords"] = list(self.stopwords)
        return data

    def to_yaml(self) -> str:
        """The YAML text, fields in the seed's order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def write(self, path: str | Path) -> Path:
        """Write the YAML to ``path`` (LocalAI's models folder, ``<name>.yaml``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, self.to_yaml())


def from_dict(data: Any) -> LocalAIModel:
    """Check a parsed definition and return it; every problem is listed in one error."""
    if not isinstance(data, dict):
        raise LocalAIDefinitionError("A LocalAI model definition is a YAML mapping (key: value).")
    problems = []
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append("name: a non-empty name of letters, digits, '.', '_' or '-'")
    if data.get("backend") != BACKEND:
        problems.append(f"backend: must be {BACKEND!r} for an OpenVINO model")
    model = (data.get("parameters") or {}).get("model") if isinstance(data.get("parameters"), dict) else None
    if not isinstance(model, str) or not model:
        problems.append("parameters.model: the hub id or folder of the IR")
    size = data.get("context_size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        problems.append("context_size: a positive integer (tokens)")
    if data.get("type") != OV_TYPE:
        problems.append(f"type: must be {OV_TYPE!r} so the backend loads the IR with optimum-intel")
    template = data.get("template")
    if not isinstance(template, dict) or template.get("use_tokenizer_template") is not True:
        problems.append("template.use_tokenizer_template: true (Gemma's chat template)")
    stopwords = data.get("stopwords", [])
    if not isinstance(stopwords, list) or not all(isinstance(s, str) for s in stopwords):
        problems.append("stopwords: a list of strings")
    if problems:
        raise LocalAIDefinitionError("Invalid LocalAI model definition:\n  " + "\n  ".join(problems))
    assert isinstance(name, str) and isinstance(model, str) and isinstance(size, int)  # checked above
    return LocalAIModel(name, model, size, use_tokenizer_template=True, stopwords=tuple(stopwords))


def read(path: str | Path) -> LocalAIModel:
    """Read and check the definition in ``path``."""
    try:
        data = yaml.safe_load(read_limited(path).decode("utf-8"))
    except GemmaWidgetsError as exc:
        raise LocalAIDefinitionError(str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise LocalAIDefinitionError(f"{path} is not a text file (a YAML definition): {exc.reason}") from exc
    except yaml.YAMLError as exc:
        raise LocalAIDefinitionError(f"{path} is not valid YAML: {exc}") from exc
    return from_dict(data)


def check_model_folder(spec: LocalAIModel) -> None:
    """For a local ``parameters.model``: the IR and the tokenizer LocalAI needs are there."""
    folder = Path(spec.model)
    if not folder.is_absolute() and spec.model.count("/") == 1 and not folder.exists():
        return  # a hub id: LocalAI downloads it
    needed = ["openvino_model.xml", "openvino_model.bin", "config.json", "tokenizer_config.json"]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise LocalAIDefinitionError(f"{folder} is not an OpenVINO export: {', '.join(missing)} missing.")
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    has_template = "chat_template" in tokenizer_config or (folder / "chat_template.jinja").is_file()
    if spec.use_tokenizer_template and not has_template:
        raise LocalAIDefinitionError(
            f"{folder} has no chat template but the definition says use_tokenizer_template: true.")


def load(spec: LocalAIModel) -> LoadedModel:
    """Load the model a definition points to the way LocalAI's backend does (optimum-intel)."""
    check_model_folder(spec)
    return load_model(spec.model, precision="ov-int4", engine="optimum")
