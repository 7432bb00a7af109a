"""Judge endpoints and templates under tenant control (issue 17, item 3). Replayed over HTTP against
the real control service: a judge URL pointing at Redis, the control service itself or cloud
metadata is refused unless the operator listed it; templates are a fixed slot language, so
attribute access and giant padded fields are refused. Against real local HTTP servers: the judge
follows no redirect and never passes a server's answer on to the tenant."""

import http.server
import threading

import httpx
import pytest

from gpo_core.judging.endpoints import JudgeEndpointError, JudgeEndpointRefused, endpoint_url
from gpo_core.judging.judges import OpenAIJudge
from gpo_core.judging.templates import check_template, render_template
from gpo_services.common.settings import Settings
from tests.platform.conftest import TENANT_KEYS, serving

KEY = next(iter(TENANT_KEYS))
ALLOWED = "http://judge.internal:8000/v1"
TEMPLATE = "Post: {prompt}\nA: {first}\nB: {second}\nBetter:"


@pytest.fixture
def service(settings, redis_client):
    with serving(settings.model_copy(update={"judge_endpoints": [ALLOWED]})) as url:
        yield url


def submit(url: str, judge: dict) -> httpx.Response:
    body = {"task": {"size": "small"}, "losses": ["logistic"], "betas": [0.1], "judge": judge}
    return httpx.post(url + "/jobs", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:6379/v1",  # Redis
        "http://127.0.0.1:8700/jobs",  # the control service itself
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://judge.internal:8001/v1",  # the allowed host, another port
        "http://judge.internal:8000/v2",  # the allowed host, another path
        "http://judge.internal:8000/v1/../admin",
    ],
)
def test_a_judge_endpoint_off_the_operators_list_is_refused(service, base_url) -> None:
    response = submit(service, {"kind": "endpoint", "base_url": base_url, "model": "judge"})
    assert response.status_code == 422, response.text
    [detail] = response.json()["details"]
    assert detail["field"] == "judge.base_url" and ALLOWED in detail["message"]


@pytest.mark.parametrize(
    ("annotator", "field", "message"),
    [
        ({"kind": "chat", "base_url": "http://127.0.0.1:6379/v1", "model": "m"}, "online.annotator.base_url", ALLOWED),
        ({"kind": "chat", "base_url": ALLOWED, "model": "m", "api_key_env": "GPO_REDIS_URL"},
         "online.annotator.api_key_env", "not a job's to name"),
        ({"kind": "local", "model_dir": "/etc"}, "online.annotator.model_dir", "not a path this deployment lets"),
    ],
)  # fmt: skip
def test_an_online_annotator_is_held_to_every_rule_of_the_judge(service, annotator, field, message) -> None:
    """The annotator of an online job is a judge too: an endpoint off the operator's list, a worker's
    variable as its key, a folder outside the tenant's uploads and the operator's roots are refused
    by field, as they are for ``judge``."""
    body = {"task": {"size": "small"}, "losses": ["logistic"], "betas": [0.1], "online": {"annotator": annotator}}
    response = httpx.post(service + "/jobs", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert response.status_code == 422, response.text
    details = {d["field"]: d["message"] for d in response.json()["details"]}
    assert field in details and message in details[field], details


@pytest.mark.parametrize(
    "base_url",
    ["file:///etc/passwd", "gopher://judge.internal:8000/", "http://user:secret@judge.internal:8000/v1",
     "http://judge.internal:8000/v1?x=1", "http:///v1", "http://judge.internal:99999/v1"],
)  # fmt: skip
def test_a_judge_url_that_is_not_plain_http_is_refused_by_field(service, base_url) -> None:
    response = submit(service, {"kind": "endpoint", "base_url": base_url, "model": "judge"})
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["details"]] == ["judge.base_url"]


def test_an_allowed_endpoint_is_accepted_in_any_spelling(service) -> None:
    for spelling in (ALLOWED, "HTTP://Judge.Internal:8000/v1/"):
        response = submit(service, {"kind": "endpoint", "base_url": spelling, "model": "judge"})
        assert response.status_code == 201, response.text


def test_no_endpoint_is_allowed_unless_the_operator_lists_it(api) -> None:
    response = submit(api, {"kind": "endpoint", "base_url": ALLOWED, "model": "judge"})
    assert response.status_code == 422
    assert "GPO_JUDGE_ENDPOINTS" in response.json()["details"][0]["message"]


@pytest.mark.parametrize(
    "template",
    [
        "{prompt.__class__.__init__.__globals__} {prompt} {first} {second}",  # attribute access
        "{prompt:>40000000000} {first} {second}",  # a 40 GB padded field
        "{prompt} {first} {second} {0}",
        "{prompt} {first} {second} {}",
        "{prompt} {first} {second} }",
        "{prompt} {first}",  # a slot missing
        "{prompt} {prompt} {first} {second}",  # a slot twice
    ],
)
def test_templates_are_a_fixed_slot_language(service, template) -> None:
    response = submit(service, {"kind": "oracle", "template": template})
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["details"]] == ["judge"]


def test_template_rendering_fills_the_slots_and_keeps_escaped_braces() -> None:
    template = 'JSON {{"a": 1}}\n' + TEMPLATE
    check_template(template)
    text = render_template(template, "{first}", "x {second} y", "{{z}}")
    assert text == 'JSON {"a": 1}\nPost: {first}\nA: x {second} y\nB: {{z}}\nBetter:'  # values are not re-read
    with pytest.raises(ValueError, match="at character 6"):
        check_template("Post: {secret} {prompt} {first} {second}")


def test_endpoint_urls_are_normalized_and_settings_refuse_bad_entries() -> None:
    assert endpoint_url("HTTPS://API.example.com:443/v1/") == "https://api.example.com:443/v1"
    assert endpoint_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    with pytest.raises(ValueError, match="GPO_JUDGE_ENDPOINTS"):
        Settings(judge_endpoints="http://ok:1/v1,ftp://bad")
    settings = Settings(judge_endpoints="http://ok:1/v1/, https://api.example.com/v1")
    assert settings.judge_endpoints == ["http://ok:1/v1", "https://api.example.com/v1"]
    assert settings.allows_judge_endpoint("http://OK:1/v1") and not settings.allows_judge_endpoint("http://ok:2/v1")


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server's configured status, headers and body; records paths."""

    def do_POST(self) -> None:
        self.server.paths.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(self.server.status)
        for name, value in self.server.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    servers = []

    def start(status: int, body: bytes = b"{}", headers: dict | None = None):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        server.status, server.body, server.headers, server.paths = status, body, headers or {}, []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def test_the_judge_follows_no_redirect(http_server) -> None:
    inside = http_server(200)
    outside = http_server(302, headers={"location": _url(inside) + "/completions"})
    judge = OpenAIJudge(_url(outside), "judge", TEMPLATE, timeout=5)
    with pytest.raises(JudgeEndpointRefused, match="HTTP 302"):
        judge.compare("post", "a", "b")
    assert outside.paths == ["/v1/completions"] and inside.paths == []


@pytest.mark.parametrize(("status", "error"), [(500, JudgeEndpointError), (429, JudgeEndpointError),
                                               (404, JudgeEndpointRefused), (401, JudgeEndpointRefused)])  # fmt: skip
def test_endpoint_errors_name_the_status_and_never_the_servers_answer(http_server, status, error) -> None:
    server = http_server(status, body=b'{"error": "SECRET internal detail at 10.0.0.7"}')
    judge = OpenAIJudge(_url(server), "judge", TEMPLATE, timeout=5)
    with pytest.raises(error) as raised:
        judge.compare("post", "a", "b")
    assert f"HTTP {status}" in str(raised.value) and "SECRET" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
