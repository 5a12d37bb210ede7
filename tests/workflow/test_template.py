"""Table-driven tests of the workflow expression language (Go-flavoured templates on Jinja)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest

from flows.errors import ValidationError
from flows.workflow.template import compile_template, is_template, shell_quote

STATUS_CHECK = (
    "{{- $status := .outputs.status_check | fromJSON -}}\n"
    "{{- range $status -}}\n"
    '  {{- if and (eq .name "api") (lt .health_score 80) -}}\n'
    "    true\n"
    "  {{- end -}}\n"
    "{{- end -}}\n"
)
FOR_LOOP = (
    "for service in {{ .services }}; do\n"  # a YAML `run: |` block
    "  sysctl deploy $service --env {{ .environment }}\ndone\n"
)


def context(score: int = 70, **overrides: Any) -> dict[str, Any]:
    ctx = {
        "environment": "production",
        "image_tag": "1.4.2",
        "services": ["api", "database"],
        "is_production": True,
        "critical_services": ["api"],
        "workflow_id": "wf-20240501-7",
        "outputs": {"status_check": f'[{{"name":"api","health_score":{score}}}]'},
        "hostile": "x; touch /tmp/pwned",
        "fragment": "--force --yes",
        "empty": [],
        "settings": {"replicas": 3},
        "nothing": None,
    }
    return ctx | overrides


CTX = context()


# (source, shell, expected render)
RENDERS = [
    ("{{ .environment }}-services", False, "production-services"),
    (
        "sysctl deploy api --env {{ .environment }} --image api:{{ .image_tag }} --wait",
        True,
        "sysctl deploy api --env production --image api:1.4.2 --wait",
    ),
    (
        "sysctl maintenance enable --services {{ join .services ',' }} --env {{ .environment }}",
        True,
        "sysctl maintenance enable --services api,database --env production",
    ),
    (
        FOR_LOOP,
        True,
        "for service in api database; do\n  sysctl deploy $service --env production\ndone\n",
    ),
    (
        "sysctl debug collect --output debug-{{ .workflow_id }}.tar.gz",
        True,
        "sysctl debug collect --output debug-wf-20240501-7.tar.gz",
    ),
    ("{{ .environment == 'production' }}", False, "true"),
    ("{{ .environment and .services }}", False, "api database"),
    (STATUS_CHECK, False, "true"),
    # plain Jinja keeps working
    ("{{ environment }}", False, "production"),
    ("{{ environment | upper }}", False, "PRODUCTION"),
    ("{{ missing | default('staging') }}", False, "staging"),
    ("{{ if .is_production }}prod{{ else }}dev{{ end }}", False, "prod"),
    # `{%` and `{#` are plain text in workflow files (awk and printf write them)
    ("printf '{%s}' {{ .environment }}", True, "printf '{%s}' production"),
    ("awk '{# not a comment #}'", False, "awk '{# not a comment #}'"),
    ("{{ range .services }}[{{ . }}]{{ end }}", False, "[api][database]"),
    ("{{ services | join(',') }}", False, "api,database"),
    ("{% raw %}{{ '{{' }} .kept }}{% endraw %}", False, "{% raw %}{{ .kept }}{% endraw %}"),
    # Go control actions and functions
    ("{{ if .is_production }}prod{{ else }}dev{{ end }}", False, "prod"),
    ('{{ if eq .environment "staging" }}s{{ else if ne .environment "x" }}p{{ end }}', False, "p"),
    ('{{ if eq .environment "qa" "production" }}one-of{{ end }}', False, "one-of"),
    ("{{ if not .is_production }}dev{{ else }}prod{{ end }}", False, "prod"),
    ("{{ range .services }}<{{ . }}>{{ end }}", False, "<api><database>"),
    ("{{ range $i, $s := .services }}{{ $i }}={{ $s }} {{ end }}", False, "0=api 1=database "),
    ("{{ range $s := .services }}{{ $s }}/{{ . }} {{ end }}", False, "api/api database/database "),
    (
        "{{ range .services }}{{ . }}@{{ $.environment }} {{ end }}",
        False,
        "api@production database@production ",
    ),
    (
        "{{ range .services }}{{ range $.critical_services }}{{ . }}{{ end }}{{ end }}",
        False,
        "apiapi",
    ),
    (
        "{{ range .empty }}x{{ else }}none in {{ .environment }}{{ end }}",
        False,
        "none in production",
    ),
    ("{{ range $k, $v := .settings }}{{ $k }}={{ $v }}{{ end }}", False, "replicas=3"),
    ("{{ $n := len .services }}{{ $n }} {{ index .services 1 }}", False, "2 database"),
    ("{{ index .settings `replicas` }} {{ .services | len }}", False, "3 2"),
    ("{{ .services | join `-` }}", False, "api-database"),
    ("{{ toJSON .settings }}", False, '{"replicas": 3}'),
    ("{{ lt .settings.replicas -1 }}", False, "false"),
    ("{{/* a comment, it's ignored */}}x", False, "x"),
    ("a\n{{- /* trimmed */ -}}\nb", False, "ab"),
    # shell quoting: each value one word, literal text untouched, raw is the opt-out
    ("echo {{ .hostile }}", True, "echo 'x; touch /tmp/pwned'"),
    ("echo {{ .services }}", True, "echo api database"),
    ("echo {{ .fragment | raw }} -- {{ .fragment }}", True, "echo --force --yes -- '--force --yes'"),
    ("run {{ .is_production }} {{ .settings.replicas }} {{ .nothing }}", True, "run true 3 ''"),
    ("run {{ .settings }}", True, """run '{"replicas": 3}'"""),
    ("echo {{ .hostile }}", False, "echo x; touch /tmp/pwned"),
    ("{{ .is_production }} {{ .nothing }}|{{ .settings }}", False, 'true |{"replicas": 3}'),
]


@pytest.mark.parametrize(("source", "shell", "expected"), RENDERS)
def test_render(source: str, shell: bool, expected: str) -> None:
    assert compile_template(source, where="deploy.yaml:3").render(CTX, shell=shell) == expected


def test_hostile_list_item_is_one_word() -> None:
    ctx = context(services=["api", "db; rm -rf /", "$(id)"])
    rendered = compile_template(FOR_LOOP).render(ctx, shell=True)
    assert rendered.startswith("for service in api 'db; rm -rf /' '$(id)'; do\n")


# (source, native value of evaluate)
EVALUATES = [
    ("{{ .environment == 'production' }}", True),
    ("{{ 'api' in .services or 'database' in .services }}", True),
    ("{{ .is_production }}", True),
    ("{{ .critical_services and .is_production }}", True),
    ("{{ .environment and .services }}", ["api", "database"]),
    ("{{ .environment in ['staging', 'production'] }}", True),
    ("{{ .outputs.status_check | fromJSON }}", [{"name": "api", "health_score": 70}]),
    ("{{ fromJSON .outputs.status_check }}", [{"name": "api", "health_score": 70}]),
    ("  {{ len .services }}\n", 2),
    ("{{ .nothing }}", None),
    ("{{ .environment }}-services", "production-services"),  # not a lone expression: text
]


@pytest.mark.parametrize(("source", "expected"), EVALUATES)
def test_evaluate(source: str, expected: Any) -> None:
    assert compile_template(source).evaluate(CTX) == expected


# (source, context, truth)
TRUTHS = [
    (STATUS_CHECK, context(70), True),
    (STATUS_CHECK, context(90), False),
    ("{{ .environment == 'production' }}", CTX, True),
    ("{{ 'api' in .services or 'database' in .services }}", context(services=["web"]), False),
    ("{{ .is_production }}", context(is_production=False), False),
    ("{{ .critical_services and .is_production }}", context(critical_services=[]), False),
    ("{{ .environment and .services }}", context(services=[]), False),
    ("{{ .environment in ['staging', 'production'] }}", context(environment="dev"), False),
    ("{{ .flag }}", context(flag="false"), False),
    ("{{ .flag }}", context(flag="yes"), True),
    ("{{ .environment }}", CTX, True),
    ("{{ if .is_production }}true{{ end }}", CTX, True),
    ("{{ if .is_production }} On {{ end }}", CTX, True),
    ("{{ if .is_production }}no{{ end }}", CTX, False),
    ("{{ if .is_production }}yes{{ end }}", context(is_production=False), False),
]


@pytest.mark.parametrize(("source", "ctx", "expected"), TRUTHS)
def test_truth(source: str, ctx: dict[str, Any], expected: bool) -> None:
    assert compile_template(source).truth(ctx) is expected


# sources rejected by compile_template: (source, words in the message)
COMPILE_ERRORS = [
    ("{{ with .x }}{{ .y }}{{ end }}", ["`with` is not supported", "{{ if .x }}"]),
    ('{{ template "x" . }}', ["`template` is not supported"]),
    ('{{ define "x" }}y{{ end }}', ["`define` is not supported"]),
    ('{{ block "x" . }}y{{ end }}', ["`block` is not supported"]),
    ("{{ range .services }}{{ break }}{{ end }}", ["`break` is not supported"]),
    ("{{ range .services }}{{ continue }}{{ end }}", ["`continue` is not supported"]),
    ('{{ printf "%s-x" .environment }}', ["`printf` is not supported"]),
    ("{{ call .fn 1 }}", ["`call` is not supported"]),
    ("{{ .environment | html }}", ["`html` is not supported", "escape"]),
    ("{{ js .environment }}", ["`js` is not supported", "toJSON"]),
    ("{{ urlquery .environment }}", ["`urlquery` is not supported", "urlencode"]),
    ("{{ slice .services 1 2 }}", ["`slice` is not supported", "index"]),
    ("done {{ end }}", ["`{{ end }}` has no matching"]),
    ("{{ if .is_production }}x", ["`{{ if }}` is never closed", "{{ end }}"]),
    ("{{ range .services }}x", ["`{{ range }}` is never closed"]),
    ("{{ else }}", ["`{{ else }}` outside"]),
    ("{{ range .services }}{{ else if .x }}{{ end }}", ["{{ else if .x }}"]),
    ("{{ if }}{{ end }}", ["needs an expression"]),
    ("{{ eq .environment }}", ["`eq` takes 2 argument(s), got 1"]),
    ("{{ $ghost }}", ["variable `$ghost` is used before"]),
    ("{{ . }}", ["bare `.`"]),
    ("{{ .environment ", ["never closed"]),
    ("{{ (.environment }}", ["unclosed `(`"]),
    ("{{ environment | }}", ["syntax error"]),
    ("{{ if }}x{{ end }}", ["needs an expression"]),
    ("{{ if .a + }}x{{ end }}", ["syntax error"]),
    ("{{ .services | nosuchfilter }}", ["nosuchfilter"]),
    # what the sandbox refuses whatever the values is refused before any render
    ("{{ ''.__class__.__mro__ }}", ["sandbox", "__class__"]),
    ("{{ .environment.__class__.__base__ }}", ["sandbox", "__class__"]),
    ("{{ environment.__init__.__globals__ }}", ["sandbox", "__init__"]),
]


@pytest.mark.parametrize(("source", "words"), COMPILE_ERRORS)
def test_compile_errors(source: str, words: list[str]) -> None:
    with pytest.raises(ValidationError) as caught:
        compile_template(source, where="deploy.yaml:14")
    assert caught.value.where == "deploy.yaml:14"
    assert str(caught.value).startswith("deploy.yaml:14: ")
    for word in words:
        assert word in caught.value.message


# sources that compile but fail at render time: (source, context, words in the message)
RENDER_ERRORS = [
    (
        "{{ .enviroment }}-services",
        CTX,
        ["undefined name `.enviroment`", "did you mean `.environment`?"],
    ),
    ("{{ if .is_prod }}x{{ end }}", CTX, ["undefined name `.is_prod`", "`.is_production`"]),
    ("{{ .outputs.status_chek }}", CTX, ["undefined field `.status_chek`", "`.status_check`"]),
    ("{{ .zzz }}", {"a": 1}, ["undefined name `.zzz`", "known: a"]),
    ("{{ .services.append('x') }}", CTX, ["sandbox"]),
    ("{{ dict.mro() }}", CTX, ["sandbox", "mro"]),
    (
        "{{ .outputs.status_check | fromJSON }}",
        context(outputs={"status_check": "oops {"}),
        ["oops {"],
    ),
    ("{{ fromJSON .bad }}", context(bad="x" * 100), ["invalid JSON", "x" * 60 + "'"]),
    ("{{ 'a' < 1 }}", CTX, ["TypeError"]),
]


@pytest.mark.parametrize(("source", "ctx", "words"), RENDER_ERRORS)
@pytest.mark.parametrize("method", ["render", "evaluate", "truth"])
def test_render_errors(source: str, ctx: dict[str, Any], words: list[str], method: str) -> None:
    template = compile_template(source, where="deploy.yaml:20", line=20)
    with pytest.raises(ValidationError) as caught:
        getattr(template, method)(ctx)
    assert caught.value.where == "deploy.yaml:20"
    for word in words:
        assert word in caught.value.message
    assert "x" * 61 not in caught.value.message  # long JSON is cut to its first 60 characters


@pytest.mark.parametrize("rendered", ["maybe", "production-services", "2"])
def test_truth_rejects_text_that_is_not_a_boolean(rendered: str) -> None:
    template = compile_template(f"{{{{ if .is_production }}}}{rendered}{{{{ end }}}}")
    expected = f"condition rendered '{rendered}' — expected true or false"
    with pytest.raises(ValidationError, match=expected):
        template.truth(CTX)


def test_hostile_command_cannot_escape_quoting() -> None:
    rendered = compile_template("echo {{ .hostile }}").render(CTX, shell=True)
    assert rendered == "echo 'x; touch /tmp/pwned'"


# (source, names(), output_names())
NAMES = [
    ("{{ .environment }}-services", {"environment"}, set()),
    ("{{ .outputs.status_check | fromJSON }}", {"outputs"}, {"status_check"}),
    (STATUS_CHECK, {"outputs"}, {"status_check"}),
    ('{{ index .outputs "health" }} {{ outputs.disk }}', {"outputs"}, {"health", "disk"}),
    ("{{ join .services ',' }} {{ .environment }}", {"services", "environment"}, set()),
    ("{{ range $i, $s := .services }}{{ $s }}{{ .outputs.x }}{{ end }}", {"services"}, set()),
    ("{{ $x := 1 }}{{ range $s := .services }}{{ $s }}{{ $x }}{{ end }}", {"services"}, set()),
    ("plain text", set(), set()),
]


@pytest.mark.parametrize(("source", "names", "outputs"), NAMES)
def test_names(source: str, names: set[str], outputs: set[str]) -> None:
    template = compile_template(source)
    assert template.names() == names
    assert template.output_names() == outputs


def test_attributes_kept() -> None:
    template = compile_template("{{ .environment }}", where="deploy.yaml:9", line=9)
    assert (template.source, template.where, template.line) == (
        "{{ .environment }}",
        "deploy.yaml:9",
        9,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("api", "api"),
        ("x; touch /tmp/pwned", "'x; touch /tmp/pwned'"),
        ("", "''"),
        (["a b", "c"], "'a b' c"),
        (("x",), "x"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (2.5, "2.5"),
        (None, "''"),
        ({"k": "v"}, """'{"k": "v"}'"""),
    ],
)
def test_shell_quote(value: Any, expected: str) -> None:
    assert shell_quote(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{ .x }}", True),
        ("{% if x %}{% endif %}", False),
        ("plain", False),
        (3, False),
        (None, False),
    ],
)
def test_is_template(value: object, expected: bool) -> None:
    assert is_template(value) is expected


def test_imports_only_stdlib_and_jinja() -> None:
    import flows.workflow.template as module

    tree = ast.parse(Path(module.__file__).read_text())
    roots = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    roots |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert roots - sys.stdlib_module_names == {"jinja2", "flows"}
