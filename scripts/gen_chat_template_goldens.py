#!/usr/bin/env python3
"""Generates the chat template goldens that tests/chat checks atom's Jinja engine against.

Every expected output comes from Python jinja2 configured as transformers configures it for
apply_chat_template (utils/chat_template_utils.py, _compile_jinja_template):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols
extension and the {% generation %} tag, the globals raise_exception, strftime_now, dict and
namespace, and a tojson filter that is json.dumps(ensure_ascii=False). When transformers itself
is installed, every case is rendered with its environment too and must agree.

Writes, under tests/data/chat_templates/:
  <template>.golden.json  one per model template: {"template": file name, "source": "shared" or
                          "repo", "cases": [{"name", "context", "expected"} or
                          {"name", "context", "error", "error_type"}]}
  engine_cases.json       small templates exercising the engine feature by feature, in the same
                          case format plus "group" and "template" fields per case.

Model templates are read from ../shared/testdata/chat_templates/*.jinja (not copied into the
repo) and tests/data/chat_templates/*.jinja.

Usage: python3 scripts/gen_chat_template_goldens.py
"""

import json
import pathlib
import random
import sys
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "testdata" / "chat_templates"
OUT = REPO / "tests" / "data" / "chat_templates"


# ---------------------------------------------------------------------------------------------
# The environment transformers builds.


class GenerationTag(jinja2.ext.Extension):
    """transformers' AssistantTracker without the tracking: {% generation %} renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


class TemplateDict:
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class TemplateNamespace(jinja2.utils.Namespace):
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, "
                f"but got {name!r}. Please rename the attribute."
            )


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def strftime_now(format):
    return datetime.now().strftime(format)


def compile_template(source):
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)


def transformers_compiler():
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except Exception:  # transformers absent or incompatible: the replica above is the reference
        return None
    return _compile_jinja_template


def render_case(compile_fn, source, context):
    """{"expected": text} or {"error": message, "error_type": exception class name}."""
    try:
        return {"expected": compile_fn(source).render(**context)}
    except jinja2.exceptions.TemplateSyntaxError:
        raise
    except Exception as e:  # the template's own failure is part of the golden
        return {"error": str(e), "error_type": type(e).__name__}


# ---------------------------------------------------------------------------------------------
# Model templates and conversations.

# bos/eos of each model family, as transformers passes its tokenizer's special tokens. Qwen2.5
# has no bos token, so the variable is absent.
FAMILY_TOKENS = {
    "meta-llama-Llama-3.1-8B-Instruct.jinja": {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
    },
    "Qwen-Qwen2.5-7B-Instruct.jinja": {"eos_token": "<|im_end|>"},
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": {
        "bos_token": "<｜begin▁of▁sentence｜>",
        "eos_token": "<｜end▁of▁sentence｜>",
    },
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": {"bos_token": "<s>", "eos_token": "</s>"},
    "microsoft-Phi-3.5-mini-instruct.jinja": {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
    "google-gemma-2-2b-it.jinja": {"bos_token": "<bos>", "eos_token": "<eos>"},
    "smollm2.jinja": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
}


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


def system(content):
    return {"role": "system", "content": content}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city — in °C or °F.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7, "default": 1},
                "precision": {"type": "number", "default": 0.5},
                "detailed": {"type": "boolean", "default": False},
            },
            "required": ["city"],
        },
        "return": {"type": "object"},
    },
}

TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}},
            "required": [],
        },
    },
}


def tool_call(arguments, call_id="call12345"):
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }


TOOL_ROUND_TRIP = [
    user("What's the weather in Paris?"),
    {"role": "assistant", "content": None, "tool_calls": [tool_call({"city": "Paris", "unit": "celsius"})]},
    {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temperature": 21.5}'},
]

# (name, messages, extra context). Each is rendered with add_generation_prompt true and false.
CONVERSATIONS = [
    ("user", [user("Hello!")], {}),
    ("system_user", [system("You are a pirate."), user("Hi there")], {}),
    ("multi_turn", [user("What is 2+2?"), assistant("4."), user("And 3+3?")], {}),
    (
        "system_multi_turn",
        [
            system("Be brief."),
            user("Name a colour."),
            assistant("Blue."),
            user("Another?"),
            assistant("Red."),
            user("One more."),
        ],
        {},
    ),
    ("assistant_last", [user("Tell me a joke."), assistant("Why did the chicken cross the road?")], {}),
    (
        "unicode",
        [
            user("Héllo wörld — 你好，世界 🌍🚀 Привет мир! ¿Qué tal? שלום"),
            assistant("Ça va très bien 😊 — ありがとう"),
            user("Ελληνικά: αβγ ΑΒΓ, combining: e\u0301, zero width:\u200b, nbsp:\u00a0."),
        ],
        {},
    ),
    (
        "whitespace",
        [
            system("  \n System with surrounding whitespace.\t\n"),
            user("  \n  leading and trailing whitespace \n\n"),
            assistant("\n\tIndented answer\n  "),
            user("line one\nline two\r\nline three\n"),
        ],
        {},
    ),
    (
        "template_like_text",
        [
            user(
                "{{ not a template }} {% if x %} {# c #} <|im_end|> </s> [INST] \"double\" "
                "'single' \\backslash \\n"
            )
        ],
        {},
    ),
    ("empty_content", [user("")], {}),
    ("consecutive_users", [user("First."), user("Second.")], {}),
    ("starts_with_assistant", [assistant("I speak first."), user("Okay.")], {}),
    ("system_only", [system("Only a system prompt.")], {}),
    ("no_messages", [], {}),
    (
        "long_conversation",
        [m for i in range(6) for m in (user(f"Question {i}?"), assistant(f"Answer {i}."))]
        + [user("Last question?")],
        {},
    ),
    ("tools", [user("What's the weather in Paris?")], {"tools": [WEATHER_TOOL, TIME_TOOL]}),
    (
        "tools_with_system",
        [system("You can call tools."), user("Weather in Oslo?")],
        {"tools": [WEATHER_TOOL]},
    ),
    ("tool_call_round_trip", TOOL_ROUND_TRIP, {"tools": [WEATHER_TOOL]}),
    (
        "tool_call_round_trip_answered",
        TOOL_ROUND_TRIP + [assistant("It is 21.5 °C in Paris.")],
        {"tools": [WEATHER_TOOL]},
    ),
    (
        "tool_call_string_arguments",
        [
            user("Weather in Rome and Oslo?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    tool_call('{"city": "Rome"}', "callAAAAA"),
                    tool_call('{"city": "Oslo"}', "callBBBBB"),
                ],
            },
            {"role": "tool", "tool_call_id": "callAAAAA", "content": "18"},
            {"role": "tool", "tool_call_id": "callBBBBB", "content": "4"},
        ],
        {},
    ),
    (
        "tool_result_mapping",
        [
            user("Weather?"),
            {"role": "assistant", "content": None, "tool_calls": [tool_call({"city": "Nice"})]},
            {"role": "tool", "tool_call_id": "call12345", "content": {"temperature": 25, "sky": "clear"}},
        ],
        {"tools": [WEATHER_TOOL]},
    ),
    (
        "tools_in_system_message",
        [user("Weather?")],
        {"tools": [WEATHER_TOOL], "tools_in_user_message": False, "date_string": "01 Jan 2025"},
    ),
    (
        "builtin_tools",
        [
            system("Environment aware."),
            user("Search the news."),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "brave_search", "arguments": {"query": "news"}}}
                ],
            },
            {"role": "ipython", "content": "Top story: ..."},
        ],
        {"builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"]},
    ),
    (
        "reasoning_in_history",
        [
            user("What is 2+2?"),
            assistant("<think>\nSimple arithmetic.\n</think>\n\nThe answer is 4."),
            user("Thanks"),
        ],
        {},
    ),
    (
        "multimodal_content",
        [user([{"type": "text", "text": "Describe this."}, {"type": "image", "url": "x.png"}])],
        {},
    ),
    ("extra_variables", [user("Hi")], {"enable_thinking": False, "date_string": "02 Feb 2025", "custom": 3}),
]


def family_context(template_name):
    return dict(FAMILY_TOKENS[template_name])


def golden_cases(template_name):
    cases = []
    for name, messages, extra in CONVERSATIONS:
        for agp in (True, False):
            # What apply_chat_template passes: tools and documents always (None when absent),
            # add_generation_prompt, the tokenizer's special tokens, then extra kwargs.
            context = {"messages": messages, "tools": None, "documents": None}
            context["add_generation_prompt"] = agp
            context.update(family_context(template_name))
            context.update(extra)
            cases.append((f"{name}/agp={str(agp).lower()}", context))
    # Bare jinja2 renders without the variables apply_chat_template always passes.
    base = {"messages": [user("Hello")]}
    cases.append(("bare_no_special_tokens", dict(base, add_generation_prompt=True)))
    cases.append(("bare_without_tools_or_generation_prompt", dict(base, **family_context(template_name))))
    return cases


# ---------------------------------------------------------------------------------------------
# Engine cases by group: (name, template, context). Expectations come from the environment above;
# the errors group holds templates Python rejects while rendering, which atom must reject too.

MSGS = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello", "tool_calls": None},
    {"role": "user", "content": "bye"},
]

ENGINE_CASES = {
    "output": [
        ("print_none_bool", "{{ none }}|{{ None }}|{{ true }}|{{ False }}", {}),
        ("print_numbers", "{{ 1 }}|{{ -3 }}|{{ 1.0 }}|{{ 2.50 }}|{{ 1e3 }}|{{ 1_000 }}|{{ 0x1F }}|{{ 0o17 }}|{{ 0b101 }}", {}),
        ("print_floats", "{{ 0.1 + 0.2 }}|{{ 1/3 }}|{{ 1e16 }}|{{ 1e15 }}|{{ 0.0001 }}|{{ 0.00001 }}|{{ 1e-7 }}|{{ 123456789.125 }}|{{ -0.0 }}", {}),
        ("print_context_numbers", "{{ i }}|{{ f }}|{{ big }}|{{ neg }}|{{ tiny }}", {"i": 42, "f": 3.14, "big": 1e300, "neg": -7, "tiny": 5e-324}),
        ("print_containers", "{{ [1, 'a', none, true, 1.5] }}|{{ {'k': 'v', 'n': [1, {'x': none}]} }}|{{ (1,) }}|{{ (1, 'b') }}|{{ () }}|{{ [] }}|{{ {} }}", {}),
        ("print_string_repr", "{{ [\"it's\", 'say \"hi\"', 'both \\' \"', 'tab\\tnl\\n', 'back\\\\slash', 'é€😀'] }}", {}),
        ("print_context_containers", "{{ messages[1] }}|{{ tools }}", {"messages": MSGS, "tools": [{"a": [1, 2.5, None, True]}]}),
        ("print_undefined", "[{{ missing }}][{{ missing.__class__ }}]", {}),
        ("string_escapes", "{{ 'a\\nb\\tc\\\\d\\'e\\\"f\\x41\\u00e9\\U0001F600\\101' }}", {}),
        ("string_unknown_escape", "{{ 'a\\qb\\dc' }}", {}),
        ("string_concat_literals", "{{ 'a' 'b' \"c\" }}", {}),
        ("string_multiline_literal", "{{ 'line1\nline2' }}", {}),
        ("tuple_output", "{{ 1, 2 }}", {}),
    ],
    "whitespace": [
        ("trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}),
        ("lstrip_blocks", "a\n    {% if true %}\n    b\n    {% endif %}\nc", {}),
        ("lstrip_not_variables", "a\n    {{ 'x' }}\n    {# c #}\nd", {}),
        ("lstrip_tabs", "x\n\t \t{% if true %}y{% endif %}\n", {}),
        ("lstrip_text_before_tag", "x  {% if true %}y{% endif %}", {}),
        ("minus_strip", "a   \n  {%- if true -%}  \n  b  \n  {%- endif -%}  \n  c", {}),
        ("minus_strip_vars", "a  {{- 'b' -}}  c {{ 'd' -}}\n\n e {{- 'f' }}", {}),
        ("plus_disables_lstrip", "a\n    {%+ if true %}b{% endif %}", {}),
        ("plus_disables_trim", "{% if true +%}\nb{% endif %}", {}),
        ("comment_trim", "a\n  {# comment #}\nb{#- x -#}   c", {}),
        ("comment_multiline", "a{# line1\nline2 #}b", {}),
        ("raw_block", "{% raw %}{{ x }}{% if %}{% endraw %}|{%- raw -%}  y  {%- endraw -%}|", {}),
        ("trailing_newline_dropped", "x\n", {}),
        ("only_one_trailing_newline_dropped", "x\n\n", {}),
        ("crlf_normalized", "a\r\nb\rc\r\n{% if true %}\r\nd{% endif %}", {}),
        ("trim_after_print_not_applied", "{{ 'a' }}\nb", {}),
        ("block_at_start_of_line_after_print", "{{ 'a' }}\n  {% if true %}x{% endif %}", {}),
        ("unicode_whitespace_strip", "a\u3000\u00a0{%- if true %}b{% endif %}", {}),
    ],
    "expressions": [
        ("arithmetic", "{{ 7 + 3 }}|{{ 7 - 10 }}|{{ 7 * 3 }}|{{ 7 / 2 }}|{{ 6 / 3 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ -7 % 3 }}|{{ 7 % -3 }}|{{ 2 ** 10 }}|{{ 2 ** -1 }}", {}),
        ("float_arithmetic", "{{ 7.5 // 2 }}|{{ -7.5 % 2 }}|{{ 1.5 * 2 }}|{{ 2 ** 0.5 }}|{{ 10 / 4 }}", {}),
        ("precedence", "{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ -2 ** 2 }}|{{ 2 * 3 ** 2 }}|{{ 1 + 2 ~ 3 + 4 }}|{{ not 1 == 2 }}", {}),
        ("bool_arithmetic", "{{ true + 1 }}|{{ true + true }}|{{ 1 + 1.5 }}|{{ true * 3 }}", {}),
        ("string_ops", "{{ 'ab' + 'cd' }}|{{ 'ab' * 3 }}|{{ 2 * 'x' }}|{{ 'a' ~ 1 ~ none ~ true ~ missing }}|{{ [1] + [2] }}|{{ [0] * 3 }}", {}),
        ("comparisons", "{{ 1 == 1.0 }}|{{ true == 1 }}|{{ 'a' < 'b' }}|{{ 1 < 2 < 3 }}|{{ 3 > 2 > 2 }}|{{ [1, 2] < [1, 3] }}|{{ 'a' != 'a' }}|{{ none == none }}|{{ 2 >= 2.0 }}", {}),
        ("dict_equality", "{{ {'a': 1, 'b': 2} == {'b': 2, 'a': 1} }}|{{ m == {'role': 'user', 'content': 'hi'} }}", {"m": {"role": "user", "content": "hi"}}),
        ("in_operator", "{{ 'a' in 'cat' }}|{{ 1 in [1, 2] }}|{{ 'k' in {'k': 1} }}|{{ 'z' not in 'cat' }}|{{ 'x' in missing }}|{{ 1.0 in [1] }}", {}),
        ("logic_values", "{{ 0 or 'x' }}|{{ 'a' and 'b' }}|{{ '' and 'b' }}|{{ none or none }}|[{{ missing and 1 }}]|{{ not '' }}|{{ not [1] }}", {}),
        ("ternary", "{{ 'y' if true else 'n' }}|{{ 'y' if 0 else 'n' }}|[{{ 'y' if false }}]|{{ 'a' if false else 'b' if true else 'c' }}", {}),
        ("is_tests", "{{ x is defined }}|{{ y is undefined }}|{{ none is none }}|{{ 'a' is string }}|{{ {} is mapping }}|{{ [] is iterable }}|{{ 'a' is iterable }}|{{ 1 is number }}|{{ 1.5 is number }}|{{ true is number }}|{{ true is boolean }}|{{ 1 is boolean }}", {"x": 1}),
        ("is_tests_2", "{{ true is true }}|{{ 1 is true }}|{{ false is false }}|{{ 0 is false }}|{{ 3 is odd }}|{{ 4 is even }}|{{ 9 is divisibleby 3 }}|{{ 1 is integer }}|{{ true is integer }}|{{ 1.0 is float }}|{{ [] is sequence }}|{{ {} is sequence }}|{{ 1 is sequence }}", {}),
        ("is_tests_3", "{{ 'a' is equalto 'a' }}|{{ 2 is eq 2 }}|{{ 2 is ne 3 }}|{{ 2 is lt 3 }}|{{ 2 is gt 3 }}|{{ 2 is ge 2 }}|{{ 2 is le 1 }}|{{ 2 is in [1, 2] }}|{{ 'abc' is lower }}|{{ 'ABC' is upper }}|{{ 'Abc' is lower }}|{{ none is sameas none }}|{{ 'upper' is filter }}|{{ 'odd' is test }}|{{ 'x' is callable }}|{{ range is callable }}", {}),
        ("is_not", "{{ x is not none }}|{{ x is not defined }}|{{ not x is defined }}|{{ x.y is not defined }}", {"x": {"a": 1}}),
        ("test_precedence", "{{ 1 + 1 is number }}|{{ 'a' ~ 'b' is string }}|{{ x is defined and x > 0 }}|{{ 'yes' if x is defined else 'no' }}", {"x": 1}),
        ("tests_on_special_values", "{{ missing is sequence }}|{{ missing is iterable }}|{{ missing is mapping }}|{{ missing is none }}|{{ none is iterable }}|{{ 'a' is sequence }}|{% for x in [1] %}{{ loop is iterable }}{% endfor %}", {}),
        ("string_comparison_unicode", "{{ 'é' > 'z' }}|{{ 'B' < 'a' }}|{{ ['a', 1] == ['a', 1.0] }}|{{ (1, 2) == [1, 2] }}|{{ 'a' == none }}", {}),
        ("membership_mixed", "{{ 1 in [true] }}|{{ 'a' in ['a', 1] }}|{{ none in [none] }}|{{ {'a': 1} in [{'a': 1}] }}|{{ 'ab' in 'cabd' }}|{{ '' in 'x' }}|{{ 1 in {1: 'x'} }}", {}),
        ("neighbour_messages", "{% for m in messages %}{% if loop.index0 > 0 and messages[loop.index0 - 1].role == 'user' %}after-user:{% endif %}{% if not loop.last and messages[loop.index0 + 1].role == 'user' %}before-user:{% endif %}{{ m.role }};{% endfor %}{{ messages[-1].content }}", {"messages": MSGS}),
        ("subscripts", "{{ m.role }}|{{ m['role'] }}|{{ l[0] }}|{{ l[-1] }}|{{ l[5] }}|{{ m.missing }}|{{ m['missing'] is defined }}|{{ l.0 }}|{{ n.0.1 }}", {"m": {"role": "user"}, "l": [1, 2, 3], "n": [[1, 2]]}),
        ("dict_methods_vs_keys", "{{ d.items is defined }}|{{ d['items'] }}|{{ d.get('items') }}|{{ d.keys() | list }}|{{ d.values() | list }}|{{ d.get('nope', 'dflt') }}|{{ d.get('nope') }}", {"d": {"items": 5, "b": 6}}),
        ("slicing", "{{ 'hello'[1:3] }}|{{ 'hello'[::-1] }}|{{ 'hello'[-3:] }}|{{ 'hello'[:-1] }}|{{ [1,2,3,4,5][::2] }}|{{ [1,2,3,4,5][4:0:-2] }}|{{ [1,2,3][5:] }}|{{ 'héllo wörld'[1:8] }}|{{ 'abc'[-10:10] }}", {}),
        ("unicode_index", "{{ s[0] }}|{{ s[-1] }}|{{ s|length }}|{{ s[::-1] }}|{% for c in s %}<{{ c }}>{% endfor %}", {"s": "日本語😀é"}),
        ("list_dict_literals", "{% set l = [1, [2, 3], {'a': (4, 5)}] %}{{ l[1][1] }}|{{ l[2].a[1] }}|{{ {'x': 1, 'x': 2} }}|{{ [1, 2,] }}|{{ {'a': 1,} }}", {}),
        ("string_methods", "{{ '  ab  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  ab'.lstrip() }}|{{ 'ab  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b \\n c '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a,b,c'.rsplit(',', 1) }}|{{ 'a\\nb\\r\\nc\\n'.splitlines() }}", {}),
        ("string_methods_2", "{{ 'abc'.startswith('ab') }}|{{ 'abc'.startswith(('x', 'a')) }}|{{ 'abc'.endswith('bc') }}|{{ 'aBc'.upper() }}|{{ 'aBc'.lower() }}|{{ \"they're bill's\".title() }}|{{ 'hELLO world'.capitalize() }}|{{ 'aaa'.replace('a', 'b') }}|{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'abcabc'.find('c') }}|{{ 'abcabc'.rfind('c') }}|{{ 'abcabc'.count('bc') }}|{{ '-'.join(['a', 'b']) }}", {}),
        ("string_methods_3", "{{ '{} and {}'.format(1, 'x') }}|{{ '{0}{1}{0}'.format('a', 'b') }}|{{ '{name}!'.format(name='Bob') }}|{{ '{{}}'.format() }}|{{ '123'.isdigit() }}|{{ 'abc'.isalpha() }}|{{ '   '.isspace() }}|{{ 'ab'.center(6, '*') }}|{{ 'ab'.ljust(4, '.') }}|{{ 'ab'.rjust(4) }}|{{ '42'.zfill(5) }}|{{ 'a=b=c'.partition('=') }}|{{ 'a=b=c'.rpartition('=') }}", {}),
        ("string_methods_unicode", "{{ 'ÉCOLE ÀÉÎ'.lower() }}|{{ 'straße'.upper() }}|{{ 'привет мир'.title() }}|{{ 'αβγ'.upper() }}|{{ '\u3000 x \u00a0'.strip() }}|{{ 'x\u2028y'.splitlines() }}", {}),
        ("split_edge_cases", "{{ ''.split() }}|{{ ''.split(',') }}|{{ '  '.split() }}|{{ 'a  b'.split(' ') }}|{{ 'a b c d'.split(None, 2) }}|{{ 'a b c d'.rsplit(None, 2) }}|{{ content.split('</think>')[-1] }}", {"content": "<think>x</think>\nanswer"}),
    ],
    "statements": [
        ("if_elif_else", "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %},{% endfor %}", {}),
        ("for_loop_vars", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}", {}),
        ("for_loop_prev_next_cycle", "{% for x in [1, 2, 3] %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle('a', 'b') }}-{{ loop.depth }};{% endfor %}", {}),
        ("for_loop_changed", "{% for x in [1, 1, 2, 2, 1] %}{% if loop.changed(x) %}{{ x }}{% endif %}{% endfor %}", {}),
        ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in [1] %}x{% else %}empty{% endfor %}|{% for x in [1, 2] if x > 5 %}{{ x }}{% else %}none kept{% endfor %}", {}),
        ("for_filter", "{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.role }}{% if loop.last %}!{% endif %},{% endfor %}", {"messages": MSGS}),
        ("for_dict", "{% for k in d %}{{ k }}{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k, v in d|items %}{{ k }}{{ v }}{% endfor %}|{% for k, v in d|dictsort %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": 2, "c": 3}}),
        ("for_unpack_lists", "{% for a, b in [[1, 2], (3, 4), 'xy'] %}{{ a }}{{ b }},{% endfor %}", {}),
        ("for_nested_loop_access", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in 'xy' %}{{ outer.index }}{{ loop.index }}{{ b }} {% endfor %}{% endfor %}", {}),
        ("for_none_iterable_error", "{% for x in none %}{% endfor %}", {}),
        ("for_undefined_iterable", "[{% for x in missing %}x{% endfor %}]", {}),
        ("for_else_break_outer", "{% for a in [1, 2] %}{{ a }}{% for b in [] %}{% else %}{% break %}{% endfor %}{{ a }}{% endfor %}done", {}),
        ("for_over_tuple_and_generator", "{% for x in (1, 2) %}{{ x }}{% endfor %}|{% for x in [3, 4]|select('odd') %}{{ x }}{% endfor %}|{% for k, v in {'a': 1}|items %}{{ k }}{{ v }}{% endfor %}", {}),
        ("generator_consumed_once", "{% set g = [1, 2, 3]|select('odd') %}{{ g|list }}|{{ g|list }}", {}),
        ("macro_default_uses_param", "{% macro m(a, b=a ~ '!') %}{{ b }}{% endmacro %}{{ m('x') }}|{{ m('x', 'y') }}", {}),
        ("macro_returns_string", "{% macro m() %}42{% endmacro %}{{ m() ~ 1 }}|{{ m() is string }}|{{ m()|int + 1 }}", {}),
        ("with_shadowing", "{% set a = 1 %}{% with a = a + 1 %}{{ a }}{% set b = 3 %}{% endwith %}{{ a }}[{{ b }}]", {}),
        ("loop_in_filter_condition", "{% for x in [1, 2, 3, 4] if x is even %}{{ loop.index }}/{{ loop.length }}:{{ x }} {% endfor %}", {}),
        ("break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
        ("scoping_loop", "{% set x = 1 %}{% for i in range(3) %}{{ x }}{% set x = x + 10 %}{{ x }},{% endfor %}{{ x }}", {}),
        ("scoping_loop_iterations_fresh", "{% for i in range(3) %}{% if i == 1 %}{% set y = 5 %}{% endif %}[{{ y }}]{% endfor %}", {}),
        ("scoping_if", "{% if true %}{% set z = 3 %}{% endif %}{{ z }}", {}),
        ("scoping_shadow_context", "{% set messages = messages[1:] %}{{ messages|length }}{% for messages in [1] %}{{ messages }}{% endfor %}{{ messages|length }}", {"messages": MSGS}),
        ("namespace", "{% set ns = namespace(found=false, n=0) %}{% for x in [1, 2, 3] %}{% if x == 2 %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.found }}|{{ ns.n }}|{{ ns.missing is defined }}", {}),
        ("namespace_empty_then_set", "{% set ns = namespace() %}{% set ns.index = 0 %}{% for m in messages %}{% set ns.index = ns.index + 1 %}{% endfor %}{{ ns.index }}", {"messages": MSGS}),
        ("namespace_from_dict", "{% set ns = namespace({'a': 1}, b=2) %}{{ ns.a }}{{ ns.b }}{{ ns['a'] }}", {}),
        ("namespace_print", "{{ namespace(a=1) }}", {}),
        ("set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c, d = 'xy' %}{{ c }}{{ d }}{% set t = 1, 2 %}{{ t }}", {}),
        ("set_block", "{% set x %}  Hello {{ 'World' }}  {% endset %}[{{ x }}]{% set y | upper | trim %} abc {% endset %}[{{ y }}]", {}),
        ("macro_basic", "{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }}|{{ greet('Bob', 'Hi') }}|{{ greet(greeting='Yo', name='Cy') }}|{{ greet() }}", {}),
        ("macro_whitespace", "{% macro m(x) %}\n  <{{ x }}>\n{% endmacro %}\n[{{ m(1) }}]", {}),
        ("macro_recursion", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n }}*{{ fact(n - 1) }}{% endif %}{% endmacro %}{{ fact(5) }}", {}),
        ("macro_reads_template_vars", "{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 2 %}{{ m() }}", {}),
        ("macro_scope_isolated", "{% macro m() %}{% set y = 5 %}{{ y }}{% endmacro %}{{ m() }}[{{ y }}]", {}),
        ("macro_in_loop", "{% for x in [1, 2] %}{% macro m() %}{{ x }}{% endmacro %}{{ m() }}{% endfor %}", {}),
        ("macro_varargs_kwargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k='v') }}", {}),
        ("macro_json_type", "{%- macro render_type(p) -%}{%- if p.type == 'array' -%}list[{{ render_type(p['items']) }}]{%- elif p.type == 'object' -%}dict{%- else -%}{{ p.type }}{%- endif -%}{%- endmacro -%}{{ render_type({'type': 'array', 'items': {'type': 'array', 'items': {'type': 'integer'}}}) }}", {}),
        ("with_block", "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]", {}),
        ("filter_block", "{% filter upper %}hello {{ 'world' }}{% endfilter %}", {}),
        ("generation_block", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %};{% endfor %}", {"messages": MSGS}),
        ("print_statement", "{% print 'a' ~ 'b' %}", {}),
    ],
    "filters": [
        ("filter_trim", "[{{ '  a b \\n'|trim }}][{{ 'xxaxx'|trim('x') }}][{{ none|trim }}][{{ 5|trim }}]", {}),
        ("filter_case", "{{ 'hello WORLD-foo bar(baz'|title }}|{{ 'hello wORLD'|capitalize }}|{{ 'MiXeD'|lower }}|{{ 'MiXeD'|upper }}|{{ none|upper }}", {}),
        ("filter_length", "{{ 'héllo'|length }}|{{ [1, 2]|count }}|{{ {'a': 1}|length }}|{{ missing|length }}", {}),
        ("filter_first_last", "{{ [1, 2, 3]|first }}|{{ [1, 2, 3]|last }}|{{ 'abc'|first }}|{{ 'abc'|last }}|[{{ []|first }}][{{ []|last }}]|{{ {'k': 1}|first }}", {}),
        ("filter_join", "{{ [1, 'a', none]|join(', ') }}|{{ ['x', 'y']|join }}|{{ [{'n': 1}, {'n': 2}]|join('-', attribute='n') }}|{{ 'abc'|join('.') }}", {}),
        ("filter_replace", "{{ 'aaa'|replace('a', 'b') }}|{{ 'aaa'|replace('a', 'b', 2) }}|{{ 'abc'|replace('', '-') }}|{{ 5|replace('5', '6') }}", {}),
        ("filter_default", "{{ missing|default('d') }}|{{ none|default('d') }}|{{ ''|default('d') }}|{{ ''|default('d', true) }}|{{ 0|d('z', boolean=true) }}|{{ 'v'|d('z') }}|{{ missing|default }}", {}),
        ("filter_tojson", "{{ data|tojson }}|{{ 'é\"<>&\\''|tojson }}|{{ 'é'|tojson(ensure_ascii=true) }}", {"data": {"b": [1, 2.5, None, True, False], "a": "x\ny\t\u0001\u007f", "c": {}, "d": [], "e": "😀"}}),
        ("filter_tojson_indent", "{{ data|tojson(indent=2) }}\n{{ data|tojson(indent=4) }}\n{{ []|tojson(indent=2) }}\n{{ {'a': {}}|tojson(indent=2) }}", {"data": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}),
        ("filter_tojson_options", "{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}|{{ [1, {'a': 2}]|tojson(separators=(',', ':')) }}|{{ (1, 2)|tojson }}|{{ 1e100|tojson }}|{{ 1.0|tojson }}|{{ {1: 'int key', none: 'none key', true: 'bool key'}|tojson }}", {}),
        ("filter_string_int_float", "{{ 5|string }}|{{ [1]|string }}|{{ none|string }}|{{ '42'|int + 1 }}|{{ '  12 '|int }}|{{ '1.5'|int }}|{{ 'abc'|int }}|{{ 'abc'|int(7) }}|{{ '0x1A'|int(base=16) }}|{{ 3.9|int }}|{{ true|int }}|{{ none|int }}|{{ '1_0'|int }}", {}),
        ("filter_float", "{{ '1.5'|float }}|{{ 'x'|float }}|{{ 3|float }}|{{ ' inf '|float }}|{{ '1e3'|float }}|{{ '-0.5'|float + 1 }}|{{ 'x'|float(2.5) }}", {}),
        ("filter_list_items", "{{ 'abc'|list }}|{{ {'a': 1, 'b': 2}|list }}|{{ {'a': 1, 'b': 2}|items|list }}|{{ (1, 2)|list }}|{{ missing|items|list }}", {}),
        ("filter_selectattr", "{{ messages|selectattr('role', 'equalto', 'user')|list|length }}|{{ messages|rejectattr('role', 'equalto', 'user')|map(attribute='role')|list }}|{{ messages|selectattr('tool_calls', 'defined')|list|length }}|{{ messages|selectattr('tool_calls')|list|length }}", {"messages": MSGS}),
        ("filter_select_reject", "{{ [1, 2, 3, 4]|select('odd')|list }}|{{ [1, 2, 3, 4]|reject('even')|list }}|{{ [1, 0, 2, none]|select|list }}|{{ [1, 2, 3]|select('>', 1)|list }}|{{ ['a', 'b']|reject('in', ['a'])|list }}|{{ ['x', 'code_interpreter']|reject('equalto', 'code_interpreter')|join(', ') }}", {}),
        ("filter_map", "{{ messages|map(attribute='role')|join(',') }}|{{ ['a', 'b']|map('upper')|list }}|{{ [{'a': {'b': 1}}, {'a': {}}]|map(attribute='a.b', default='-')|list }}|{{ [[1, 2], [3]]|map('length')|list }}|{{ ['1', '2']|map('int')|sum }}", {"messages": MSGS}),
        ("filter_generators", "{{ [1, 2]|select('odd') is iterable }}|{{ ([]|select) is sequence }}|{% if []|select %}truthy{% endif %}|{{ [3, 1]|map('string')|join }}|{{ [1, 2, 3]|reverse|list }}", {}),
        ("filter_sort_unique", "{{ ['b', 'A', 'a', 'C']|sort }}|{{ ['b', 'A', 'a', 'C']|sort(case_sensitive=true) }}|{{ [3, 1, 2]|sort(reverse=true) }}|{{ [{'n': 2}, {'n': 1}]|sort(attribute='n')|map(attribute='n')|list }}|{{ ['a', 'B', 'b', 'A']|unique|list }}|{{ ['a', 'B', 'b', 'A']|unique(case_sensitive=true)|list }}", {}),
        ("filter_sort_multi_attribute", "{{ people|sort(attribute='age,name')|map(attribute='name')|join(' ') }}|{{ [d, d]|sort|length }}|{{ people|sort(attribute='age', reverse=true)|map(attribute='name')|join(' ') }}", {"people": [{"name": "b", "age": 3}, {"name": "A", "age": 1}, {"name": "a", "age": 3}], "d": {"k": 1}}),
        ("filter_dictsort", "{{ {'b': 1, 'a': 2, 'C': 0}|dictsort }}|{{ {'b': 1, 'a': 2}|dictsort(by='value') }}|{{ {'b': 1, 'a': 2}|dictsort(reverse=true) }}", {}),
        ("filter_min_max_sum", "{{ [1, 5, 2]|max }}|{{ [1, 5, 2]|min }}|{{ ['b', 'A']|min }}|{{ [1, 2, 3]|sum }}|{{ [1.5, 2]|sum }}|{{ [{'v': 2}, {'v': 3}]|sum(attribute='v') }}|{{ [[1], [2]]|sum(start=[]) }}|[{{ []|max }}]", {}),
        ("filter_reverse_batch", "{{ 'abc'|reverse }}|{{ [1, 2, 3]|reverse|list }}|{{ [1, 2, 3, 4, 5]|batch(2)|list }}|{{ [1, 2, 3]|batch(2, 0)|list }}", {}),
        ("filter_round_abs", "{{ 2.5|round }}|{{ 3.5|round }}|{{ 2.675|round(2) }}|{{ 3|round }}|{{ 2.1|round(0, 'ceil') }}|{{ 2.9|round(method='floor') }}|{{ -2.5|round }}|{{ -3|abs }}|{{ -3.5|abs }}|{{ 1234.5678|round(2) }}|{{ 0.5|round }}|{{ 1.5|round }}", {}),
        ("filter_indent", "[{{ 'a\\nb\\n\\nc'|indent }}]\n[{{ 'a\\nb\\n\\nc'|indent(2, true) }}]\n[{{ 'a\\nb\\n\\nc'|indent(2, blank=true) }}]\n[{{ 'a\\nb'|indent('>>', first=true) }}]\n[{{ 'a\\nb\\n'|indent(2) }}]", {}),
        ("filter_center_escape_safe", "[{{ 'hi'|center(7) }}]|{{ '<a href=\"x\">&\\'</a>'|e }}|{{ '<b>'|safe }}|{{ 5|safe }}|{{ none|escape }}", {}),
        ("filter_attr", "{{ d|attr('role') }}|{{ d|attr('items') is defined }}|{{ (d|attr('get'))('role') }}", {"d": {"role": "user"}}),
        ("filters_on_undefined", "[{{ missing|trim }}][{{ missing|upper }}][{{ missing|list }}][{{ missing|join(',') }}][{{ missing|default('x')|upper }}][{{ missing|string }}][{{ missing|e }}][{{ missing|safe }}][{{ missing|first }}][{{ missing|count }}]", {}),
        ("tojson_unicode_indent", "{{ {'ключ': ['値', {'emoji': '🙂', 'esc': '\\u00e9'}], 'n': -0.0, 'big': 1234567890123456789}|tojson(indent=1) }}", {}),
        ("filter_chains", "{{ messages|selectattr('role', 'in', ['user', 'assistant'])|map(attribute='content')|map('upper')|join(' / ') }}", {"messages": MSGS}),
        ("filter_in_expression", "{{ 'a' + x|trim + 'b' }}|{{ -x2|abs }}|{{ (x ~ 'y')|upper }}|{{ messages|length - 1 }}", {"x": " q ", "x2": 3, "messages": MSGS}),
    ],
    "globals": [
        ("range_global", "{{ range(3)|list }}|{{ range(1, 7, 2)|list }}|{{ range(5, 0, -2)|list }}|{{ range(0)|list }}", {}),
        ("dict_global", "{{ dict(a=1, b=2) }}|{{ dict({'x': 1}, y=2) }}|{{ dict([('k', 'v')]) }}", {}),
        ("globals_defined", "{{ strftime_now is defined }}|{{ raise_exception is callable }}|{{ namespace is defined }}|{{ dict() }}|{{ range(-3)|list }}|{{ range(3, -3, -2)|list }}", {}),
        ("joiner_default_separator", "{% set j = joiner() %}{% for x in 'abc' %}{{ j() }}{{ x }}{% endfor %}", {}),
        ("context_shadows_globals", "{{ range }}|{{ dict }}", {"range": "not a function", "dict": {"k": 1}}),
        ("joiner_global", "{% set j = joiner(' | ') %}{% for x in [1, 2, 3] %}{{ j() }}{{ x }}{% endfor %}", {}),
    ],
    "errors": [
        ("raise_exception", "{% if true %}{{ raise_exception('Custom failure: ' ~ 42) }}{% endif %}", {}),
        ("undefined_attribute_error", "{{ missing.attr }}", {}),
        ("undefined_item_error", "{{ messages[0]['role'] }}", {"messages": []}),
        ("undefined_arithmetic_error", "{{ missing + 1 }}", {}),
        ("type_error_concat", "{{ 'a' + 1 }}", {}),
        ("type_error_concat_list", "{{ [1] + 'a' }}", {}),
        ("type_error_compare", "{{ 1 < 'a' }}", {}),
        ("type_error_in_string", "{{ 1 in 'abc' }}", {}),
        ("division_by_zero", "{{ 1 / 0 }}", {}),
        ("modulo_by_zero", "{{ 1 % 0 }}", {}),
        ("length_of_int", "{{ 5|length }}", {}),
        ("tojson_undefined", "{{ missing|tojson }}", {}),
        ("int_of_undefined", "{{ missing|int }}", {}),
        ("call_undefined", "{{ missing() }}", {}),
        ("call_non_callable", "{{ 'abc'() }}", {}),
        ("unsafe_list_append", "{% set l = [1] %}{{ l.append(2) }}", {}),
        ("unsafe_dunder", "{{ ''.__class__ }}", {}),
        ("namespace_underscore", "{% set ns = namespace() %}{% set ns._x = 1 %}", {}),
        ("set_attr_on_non_namespace", "{% set d = {} %}{% set d.x = 1 %}", {}),
        ("macro_too_many_args", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}", {}),
        ("macro_unknown_kwarg", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, b=2) }}", {}),
        ("unpack_mismatch", "{% for a, b in [[1, 2, 3]] %}{% endfor %}", {}),
        ("range_too_big", "{{ range(200000)|length }}", {}),
        ("slice_step_zero", "{{ 'abc'[::0] }}", {}),
        ("selectattr_missing_attribute_chain", "{{ messages|selectattr('content.x')|list }}", {"messages": [{"role": "user"}]}),
        ("message_content_list_in_concat", "{{ 'x' + messages[0].content }}", {"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
        ("string_multiply_list", "{{ 'a' * 'b' }}", {}),
        ("neg_string", "{{ -'a' }}", {}),
        ("key_order_preserved", "{% for k, v in tool.items() %}{{ k }},{% endfor %}|{{ tool|tojson }}", {"tool": {"zeta": 1, "alpha": {"y": 1, "b": 2}, "mid": [3]}}),
    ],
}


def whitespace_fuzz_cases(seed=20240726, count=300):
    """Random nests of text, tags and whitespace control, for trim/lstrip/strip semantics."""
    rng = random.Random(seed)
    texts = ["a", " ", "  ", "\n", "\t", "\n  ", " \n", "b c", "\n\n", "\n\t \n", "\u3000"]

    def sign(allow_plus=True):
        return rng.choice(["", "-", "+"] if allow_plus else ["", "-"])

    def block(body_depth):
        kind = rng.choice(["if", "if_else", "for", "set", "comment", "print", "raw", "text"])
        pad = rng.choice(texts)
        if kind == "text" or body_depth == 0 and kind in ("if", "if_else", "for"):
            return rng.choice(texts) + rng.choice(texts)
        if kind == "print":
            return "{{" + sign(False) + " 'v' " + sign(False) + "}}"
        if kind == "comment":
            return "{#" + sign() + " c " + sign() + "#}"
        if kind == "set":
            return "{%" + sign() + " set x = 1 " + sign() + "%}"
        if kind == "raw":
            return "{%" + sign() + " raw " + sign(False) + "%}" + pad + "{{ r }}" + pad + \
                "{%" + sign() + " endraw " + sign() + "%}"
        inner = "".join(block(body_depth - 1) for _ in range(rng.randint(1, 3)))
        if kind == "for":
            return "{%" + sign() + " for i in range(2) " + sign() + "%}" + pad + inner + \
                "{%" + sign() + " endfor " + sign() + "%}"
        head = "{%" + sign() + " if " + rng.choice(["true", "false"]) + " " + sign() + "%}"
        other = ""
        if kind == "if_else":
            other = "{%" + sign() + " else " + sign() + "%}" + pad + \
                "".join(block(body_depth - 1) for _ in range(rng.randint(1, 2)))
        return head + pad + inner + other + "{%" + sign() + " endif " + sign() + "%}"

    cases = []
    for i in range(count):
        template = "".join(rng.choice(texts) + block(3) for _ in range(rng.randint(1, 4)))
        template += rng.choice(["", "\n", " ", "\n\n"])
        cases.append((f"ws_fuzz_{i:03d}", template, {}))
    return cases


def engine_cases(compile_fn):
    groups = dict(ENGINE_CASES, whitespace_fuzz=whitespace_fuzz_cases())
    cases = []
    for group, name, template, context in (
        (g, *case) for g, group_cases in groups.items() for case in group_cases
    ):
        case = {"group": group, "name": name, "template": template, "context": context}
        case.update(render_case(compile_fn, template, context))
        cases.append(case)
    return cases


# ---------------------------------------------------------------------------------------------


def model_templates():
    found = []
    if SHARED.is_dir():
        found += [("shared", p) for p in sorted(SHARED.glob("*.jinja"))]
    else:
        print(f"warning: {SHARED} not found; only repo templates are rendered", file=sys.stderr)
    found += [("repo", p) for p in sorted(OUT.glob("*.jinja"))]
    return found


def cross_check(reference, other, source, context, label):
    if other is None:
        return
    got = render_case(other, source, context)
    if got != reference:
        raise SystemExit(f"{label}: transformers renders differently:\n{got!r}\nvs\n{reference!r}")


def write_json(path, data):
    text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path.relative_to(REPO)}")


def main():
    other = transformers_compiler()
    if other is None:
        print("transformers not importable: skipping the cross-check", file=sys.stderr)
    for origin, path in model_templates():
        source = path.read_text(encoding="utf-8")
        name = path.name
        if name not in FAMILY_TOKENS:
            raise SystemExit(f"{name}: add its bos/eos tokens to FAMILY_TOKENS")
        cases = []
        for case_name, context in golden_cases(name):
            result = render_case(compile_template, source, context)
            cross_check(result, other, source, context, f"{name}/{case_name}")
            cases.append({"name": case_name, "context": context, **result})
        stem = name[: -len(".jinja")]
        write_json(OUT / f"{stem}.golden.json", {"template": name, "source": origin, "cases": cases})
    cases = engine_cases(compile_template)
    for case in cases:
        cross_check(
            {k: case[k] for k in ("expected", "error", "error_type") if k in case},
            other,
            case["template"],
            case["context"],
            f"engine/{case['name']}",
        )
    write_json(OUT / "engine_cases.json", cases)


if __name__ == "__main__":
    main()
