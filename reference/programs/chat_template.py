"""A model directory's own chat template, rendered as transformers' `tokenizer.apply_chat_template` renders it.

Where the template is found (transformers' PreTrainedTokenizerBase.from_pretrained): `chat_template.jinja`
(what transformers 5 writes), else the `chat_template` of `tokenizer_config.json` (a string, or a list of
{"name", "template"} of which the one named "default" is used). Templates in `additional_chat_templates/`
are other named templates, not the default, and are not read.

How it is rendered (transformers' utils/chat_template_utils.py, `_cached_compile_jinja_template` and
`render_jinja_template`): jinja2's ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the
loopcontrols extension and the `{% generation %}` tag (its body rendered as is), the filter `tojson`
(json.dumps, no HTML escaping), the globals `raise_exception` (a TemplateError), `strftime_now`, `dict`
and `namespace` (no names with a leading underscore); the variables `messages`, `tools` (None),
`documents` (None), `add_generation_prompt` and the tokenizer's special tokens (`bos_token`, `eos_token`,
... as `special_tokens_map` has them: special_tokens_map.json over tokenizer_config.json over GPT-2's
<|endoftext|> for GPT-2's tokenizer). Message keys whose value is null are dropped first, as there.

jinja2 (installed with transformers, the hf extra) is imported inside `ChatTemplate.__init__`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .tokenizers import GPT2_SPECIAL, SPECIAL_ATTRIBUTES, _content

TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
GPT2_CLASSES = (None, "GPT2Tokenizer", "GPT2TokenizerFast")


class ChatTemplateError(ValueError):
    """A template that cannot be read, compiled or rendered: one line naming the file and jinja2's message."""


def _json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ChatTemplateError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ChatTemplateError(f"{file}: expected a JSON object, got {type(d).__name__}")
    return d


def find_template(model_dir) -> tuple[str, Path] | None:
    """(template text, the file it came from) of a model directory, or None if it has none."""
    d = Path(model_dir)
    if (d / TEMPLATE_FILE).is_file():
        try:
            return (d / TEMPLATE_FILE).read_text(encoding="utf-8"), d / TEMPLATE_FILE
        except (OSError, UnicodeDecodeError) as e:
            raise ChatTemplateError(f"{d / TEMPLATE_FILE}: cannot read it as UTF-8 text ({e})") from None
    t = _json(d / CONFIG_FILE).get("chat_template")
    if t is None:
        return None
    if isinstance(t, list):
        named = {e.get("name"): e.get("template") for e in t if isinstance(e, dict)}
        if not isinstance(named.get("default"), str):
            raise ChatTemplateError(f"{d / CONFIG_FILE}: chat_template holds the templates {sorted(map(str, named))} "
                                    "and none named 'default' (expected one, as transformers does)")
        t = named["default"]
    if not isinstance(t, str):
        raise ChatTemplateError(f"{d / CONFIG_FILE}: chat_template must be a Jinja string, got {type(t).__name__}")
    return t, d / CONFIG_FILE


def special_tokens(model_dir) -> dict[str, str]:
    """The template's special-token variables: {"bos_token": ..., ...} as transformers' special_tokens_map
    (only those that are set; GPT-2's tokenizer sets bos, eos and unk to <|endoftext|> by default)."""
    d = Path(model_dir)
    config, smap = _json(d / CONFIG_FILE), _json(d / "special_tokens_map.json")
    defaults = GPT2_SPECIAL if config.get("tokenizer_class") in GPT2_CLASSES else {}
    out = {}
    try:
        for attr in SPECIAL_ATTRIBUTES:
            value = (_content(smap.get(attr), d / "special_tokens_map.json")
                     or _content(config.get(attr), d / CONFIG_FILE) or defaults.get(attr))
            if value:
                out[attr] = value
    except ValueError as e:
        raise ChatTemplateError(str(e)) from None
    return out


class ChatTemplate:
    """A compiled chat template: `render(messages, add_generation_prompt)` -> text; `source` names the file,
    `digest` is the SHA-256 of the template text. ChatTemplateError (naming `source`) for a template that
    does not compile; `render` raises it with jinja2's message (raise_exception's included)."""

    def __init__(self, text: str, source: str, variables: dict[str, str] | None = None):
        try:
            import jinja2
            from jinja2.ext import Extension, loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise ChatTemplateError(f"{source} has a chat template, and rendering it needs jinja2 "
                                    "(pip install -e '.[hf]')") from None
        self.text, self.source, self.variables = text, str(source), dict(variables or {})
        self.digest = hashlib.sha256(text.encode("utf-8")).hexdigest()

        class Generation(Extension):                  # {% generation %}...{% endgeneration %}: the body, as is
            tags = {"generation"}

            def parse(self, parser):
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
                return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

            def _body(self, caller):
                return caller()

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        class TemplateDict:
            def __call__(self, *args, **kwargs):
                return dict(*args, **kwargs)

            def fromkeys(self, *args, **kwargs):
                return dict.fromkeys(*args, **kwargs)

        class Namespace(jinja2.utils.Namespace):
            def __init__(*args, **kwargs):
                self, args = args[0], args[1:]
                attrs = dict(*args, **kwargs)
                for name in attrs:
                    Namespace._check(name)
                jinja2.utils.Namespace.__init__(self, attrs)

            def __setitem__(self, name, value):
                Namespace._check(name)
                jinja2.utils.Namespace.__setitem__(self, name, value)

            @staticmethod
            def _check(name):
                if isinstance(name, str) and name.startswith("_"):
                    raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_': {name!r}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
        env.filters["tojson"] = tojson
        env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f),
                           dict=TemplateDict(), namespace=Namespace)
        try:
            self._template = env.from_string(text)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise ChatTemplateError(f"{self.source}: the chat template does not compile (template line {e.lineno}: "
                                    f"{e.message})") from None

    @classmethod
    def from_dir(cls, model_dir) -> ChatTemplate | None:
        """The template of a model directory (`find_template`) with its special tokens, or None if none."""
        found = find_template(model_dir)
        return None if found is None else cls(found[0], found[1], special_tokens(model_dir))

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The template's text for `messages` (null-valued keys dropped, as apply_chat_template does)."""
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return self._template.render(messages=messages, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self.variables)
        except Exception as e:                              # TemplateError, raise_exception's, a TypeError inside
            message = getattr(e, "message", None) or str(e) or type(e).__name__
            raise ChatTemplateError(f"the chat template of {self.source} failed: {message}") from None

    def describe(self) -> str:
        """"FILE (sha256 1234abcd...)": for prepare's summary line."""
        return f"{self.source} (sha256 {self.digest[:12]})"
