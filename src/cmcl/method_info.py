"""A method's metadata and option resolution: torch-free, shared by the registry and the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

from cmcl.schema import message


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    citation: str
    options: dict  # JSON schema fragment: {"properties": {...}, "required": [...]}
    joint: bool
    first_step_ignores: tuple[str, ...]
    space: dict | None = None  # the tuning search space (None: undeclared)
    budget: dict = field(default_factory=dict)  # option -> "samples" | "per_task"

    def schema(self) -> dict:
        return {"type": "object", "additionalProperties": False, **self.options}


def resolve_options(info: MethodInfo, given: dict, where: str | None = None) -> dict:
    """Fill a method's option defaults and validate the result against its schema.

    Validating the filled options lets the schema's cross-field rules (`allOf` of if/then, e.g.
    a threshold's range per `threshold_mode`) see defaulted values too; a rule's "$comment"
    says why in the message.
    """
    import jsonschema

    where = where or f"methods.{info.name}"
    out = dict(given) if isinstance(given, dict) else given
    if isinstance(out, dict):
        for key, sub in info.options.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = sub["default"]
    errors = list(jsonschema.Draft202012Validator(info.schema()).iter_errors(out))
    if errors:
        lines = [f"  {'.'.join([where, *map(str, e.absolute_path)])}: {message(e)}"
                 + (f" ({e.schema['$comment']})" if isinstance(e.schema, dict)
                    and "$comment" in e.schema else "")
                 for e in errors]
        raise ValueError("invalid method options\n" + "\n".join(lines))
    return out
