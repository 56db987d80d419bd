"""Checking tool arguments against a tool's input schema, with messages an agent can act on.

Every violation is named by where it is (``records[1].age``) and what is wrong (``'old' is not of type
'integer'``); the either/or of the row and ``records`` forms gets a sentence of its own, because
JSON Schema's own words for it ("is not valid under any of the given schemas") explain nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import relevance

from router.mcp.schema import RECORDS, SCORING_KEYS, ToolSchema

MAX_REPORTED = 3


class InvalidArguments(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ArgumentChecker:
    """The compiled validators of one tool's schemas (compiling costs far more than checking)."""

    def __init__(self, schema: ToolSchema) -> None:
        self.schema = schema
        Draft202012Validator.check_schema(schema.input_schema)
        self._validator = Draft202012Validator(schema.input_schema)
        self._output = None
        if schema.output_schema is not None:
            Draft202012Validator.check_schema(schema.output_schema)
            self._output = Draft202012Validator(schema.output_schema)

    def output_violation(self, reply: Any) -> str | None:
        """Why the replica's reply does not match the output schema, or None when it does (or there is
        no output schema): the MCP client rejects structured content its schema does not describe."""
        if self._output is None:
            return None
        errors = sorted(self._output.iter_errors(reply), key=relevance, reverse=True)
        if not errors:
            return None
        return f"{location(errors[0].absolute_path, root='answer')}: {_shorten(errors[0].message)}"

    def check(self, arguments: Any) -> dict[str, Any]:
        """``arguments`` when they satisfy the schema; ``InvalidArguments`` naming each violation."""
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidArguments(f"arguments must be an object, got {type(arguments).__name__}")
        errors = sorted(self._validator.iter_errors(arguments), key=relevance, reverse=True)
        if not errors:
            return arguments
        messages = _dedupe(self._describe(error, arguments) for error in errors)
        extra = len(messages) - MAX_REPORTED
        text = "; ".join(messages[:MAX_REPORTED]) + (f"; and {extra} more" if extra > 0 else "")
        raise InvalidArguments(f"arguments do not match the tool's input schema: {text}")

    def _describe(self, error: ValidationError, arguments: dict[str, Any]) -> str:
        if error.validator == "oneOf" and not error.absolute_path:
            return self._form_message(arguments)
        return f"{location(error.absolute_path)}: {_shorten(error.message)}"

    def _form_message(self, arguments: dict[str, Any]) -> str:
        form = self.schema.form
        if form == "scoring":
            given = [key for key in SCORING_KEYS if key in arguments]
            return (f"give exactly one of {', '.join(SCORING_KEYS)} (got {', '.join(given) or 'none'})")
        fields = self.schema.fields
        if RECORDS in arguments:
            mixed = [name for name in fields if name in arguments]
            return (f"give either the columns of one row or several rows in '{RECORDS}', not both "
                    f"(found {_names(mixed)} next to '{RECORDS}')")
        required = self.schema.input_schema["oneOf"][0]["required"]
        missing = [name for name in required if name not in arguments]
        return (f"missing column(s) {_names(missing)} of the row (or give several rows in "
                f"'{RECORDS}'); the columns are {_names(fields)}")


def location(path: Sequence[str | int] | Iterable[str | int], root: str = "arguments") -> str:
    """``["records", 1, "age"]`` -> ``records[1].age``; the top level is ``root``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or root


def _names(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _dedupe(messages: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(messages))


def _shorten(text: str, limit: int = 300) -> str:
    # jsonschema quotes the offending value, which for a model's answer may be every prediction.
    return text if len(text) <= limit else text[: limit - 3] + "..."
