"""A student with another chat template ([student_model] chat_template): its model directory seen through
links to the same files, with its own template, so two students may share weights but not their chat format."""

from __future__ import annotations

import json
from pathlib import Path

from orion_assets.ids import content_id
from orion_assets.training.student import BuiltModel, publish_build

# Files of the base directory the template directory writes itself rather than links.
OWN_FILES = frozenset({"chat_template.jinja", "tokenizer_config.json", "build_info.json"})


def read_template(template: str) -> str:
    """The Jinja text of ``[student_model] chat_template``: the text itself, or a ``.jinja`` file it names."""
    if template.strip().endswith(".jinja") and "\n" not in template.strip():
        path = Path(template.strip()).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"[student_model] chat_template: no file {path}")
        return path.read_text(encoding="utf-8")
    return template


def with_chat_template(built: BuiltModel, template: str, models_dir: Path) -> BuiltModel:
    """``built`` with ``template`` as its chat template, in ``models_dir/<name>-template-<hash>`` (made once,
    atomically; the weights are links to the base's files). Its ``config_hash`` covers the template, so the
    checkpoints and cached calls of the two never mix. A template that does not render is refused here."""
    from transformers import AutoTokenizer  # deferred: heavy

    text = read_template(template)
    digest = content_id("chat-template", built.config_hash, text)
    info = json.loads((built.path / "build_info.json").read_text()) if (built.path / "build_info.json").is_file() else {}

    def build(tmp: Path) -> None:
        for item in sorted(built.path.iterdir()):
            if item.name not in OWN_FILES and not item.name.startswith("."):
                (tmp / item.name).symlink_to(item.resolve())
        config = json.loads((built.path / "tokenizer_config.json").read_text(encoding="utf-8"))
        config.pop("chat_template", None)
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (tmp / "chat_template.jinja").write_text(text, encoding="utf-8")
        probe = [{"role": "user", "content": "What is 1 + 1?"}]
        try:
            AutoTokenizer.from_pretrained(tmp).apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - any template error is the user's to fix
            raise ValueError(f"[student_model] chat_template does not render a chat: {exc}") from exc
        (tmp / "build_info.json").write_text(json.dumps(
            {**info, **built.to_json(), "path": str(tmp), "config_hash": digest, "base_config_hash": built.config_hash,
             "chat_template_sha": content_id("template-text", text)}, indent=2), encoding="utf-8")

    return publish_build(models_dir / f"{built.path.name}-template-{digest[:12]}", build)
