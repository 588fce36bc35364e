"""Keep credentials and job secrets out of logs, even at debug level (``-vv``).

botocore logs every request at DEBUG: the ``Authorization`` header (which
names the access key id), the session token, the string it signed, and request
bodies, such as a Lambda Invoke payload that carries a job's secret
(``wrenpack.auth``), the call's ``env=`` values (API tokens, passwords) and the
secrets of the jobs whose futures it was given (of these two only the names
are shown). ``RedactingFilter`` rewrites such records before any handler
writes them. ``install()`` puts it on botocore's and urllib3's
loggers (records are filtered where they are made, whoever configured
logging); the CLI also puts it on its own handlers. Standard library only.
"""
from __future__ import annotations

import ast
import json
import logging
import re

_PATTERNS = [
    (re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|ANPA|AGPA)[A-Z0-9]{12,}\b"), "<redacted-key-id>"),
    (re.compile(r"(Credential=)[^,\s'\"]+"), r"\1<redacted>"),
    (re.compile(r"(Signature=)[0-9a-fA-F]+"), r"\1<redacted>"),
    (re.compile(r"((?:X-Amz-Security-Token|x-amz-security-token|SessionToken|aws_session_token)['\"]?\s*[:=]\s*b?['\"]?)"
                r"[^'\"\s,}]+", re.IGNORECASE), r"\1<redacted>"),
    (re.compile(r"((?:aws_secret_access_key|SecretAccessKey|secret_key)['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,}]+",
                re.IGNORECASE), r"\1<redacted>"),
    # A wrenpack event's job secret (JSON inside a request body, escaped or not).
    (re.compile(r'(\\?"secret\\?"\s*:\s*\\?")[^"\\]*'), r"\1<redacted>"),
]

#: Loggers that may print credentials or request bodies at DEBUG.
LOGGERS = (
    "botocore", "botocore.endpoint", "botocore.auth", "botocore.hooks", "botocore.parsers", "botocore.credentials",
    "botocore.httpsession", "botocore.retryhandler", "botocore.regions", "botocore.client", "boto3",
    "boto3.resources.action", "s3transfer", "urllib3", "urllib3.connectionpool",
)


#: a request body as botocore logs it: ``'body': b'...'`` (a bytes literal, quotes escaped inside)
_BODY = re.compile(r"""(['"]body['"]:\s*)(b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"))""")
#: an event's fields whose values are secret while their names help whoever reads the log:
#: the call's environment variables, and the secrets of the jobs whose futures it was given
_NAMED_SECRETS = ("env", "ref_secrets")
#: the same fields where no body literal could be read, escaped or not (a value holding a
#: brace ends the match early: what follows it is cut too, up to the next closing brace)
_NAMED_OBJECT = re.compile(r'(\\?"(?:env|ref_secrets)\\?"\s*:\s*)\{[^{}]*\}')


def _event_names_only(match: re.Match[str]) -> str:
    """A logged request body that is a wrenpack event, its ``_NAMED_SECRETS`` values
    replaced and their names kept (a body that cannot be read is cut by ``_NAMED_OBJECT``)."""
    literal = match.group(2)
    if not any(f'"{name}"' in literal for name in _NAMED_SECRETS):
        return match.group(0)
    try:
        event = json.loads(ast.literal_eval(literal))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return match.group(1) + _NAMED_OBJECT.sub(r"\1{<redacted>}", literal)
    if not isinstance(event, dict):
        return match.group(0)
    for name in _NAMED_SECRETS:
        if isinstance(event.get(name), dict):
            event[name] = {key: "<redacted>" for key in event[name]}
        elif event.get(name) is not None:
            event[name] = "<redacted>"
    return match.group(1) + repr(json.dumps(event).encode())


def redact(text: str) -> str:
    if "env" in text or "ref_secrets" in text:
        text, bodies = _BODY.subn(_event_names_only, text)
        if not bodies:
            text = _NAMED_OBJECT.sub(r"\1{<redacted>}", text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with credentials and secrets removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is left for logging to report
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = RedactingFilter()


def install(handlers: list[logging.Handler] | None = None) -> None:
    """Filter the AWS libraries' loggers (and ``handlers``, if given). Idempotent."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in handlers or ():
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
