"""REST/JSON bindings (google.api.http) of the four services, read from the generated descriptors: every RPC has one,
path variables name fields of the request, bodies follow the verbs, no two bindings could match one HTTP request
(Envoy's grpc_json_transcoder would serve either), and the descriptor set Envoy loads carries all of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor, MethodDescriptor

SERVICES = (
    "pos.checkout.v1.CheckoutService",
    "pos.stock.v1.StockService",
    "pos.customer.v1.CustomerService",
    "pos.loyalty.v1.LoyaltyService",
)
# As in test_contract_descriptors: every other RPC changes something, and is never a GET.
READ_ONLY_VERBS = ("Get", "List", "Find", "Watch", "Export", "Quote")
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
DESCRIPTOR_SET = Path(__file__).resolve().parents[2] / "libs" / "contracts" / "src" / "pos" / "descriptor_set.binpb"


@dataclass(frozen=True)
class Binding:
    """One HTTP binding of an RPC: its HttpRule or one of the rule's additional_bindings."""

    method: MethodDescriptor
    http_method: str
    path: str
    body: str

    def __str__(self) -> str:
        return f"{self.method.full_name}: {self.http_method.upper()} {self.path}"


@dataclass(frozen=True)
class Template:
    """A parsed path template: its segments (a variable's segments are its pattern, `*` by default), the field
    path each variable binds, and the custom verb (`:verb`, empty when none)."""

    segments: tuple[str, ...]
    variables: tuple[str, ...]
    verb: str


def parse_template(path: str) -> Template:
    """`/v1/stores/{store_id}/items/{sku}:verb` -> segments, variables, verb. ValueError when malformed."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r} does not start with /")
    segments: list[str] = []
    variables: list[str] = []
    verb = ""
    rest = path[1:]
    while rest:
        if rest.startswith("{"):
            end = rest.find("}")
            if end < 0:
                raise ValueError(f"{path!r}: unclosed variable")
            name, _, pattern = rest[1:end].partition("=")
            if not name:
                raise ValueError(f"{path!r}: variable without a name")
            variables.append(name)
            segments.extend((pattern or "*").split("/"))
            rest = rest[end + 1 :]
        else:
            cut = min((i for i in (rest.find("/"), rest.find(":"), rest.find("{")) if i >= 0), default=len(rest))
            if cut == 0:
                raise ValueError(f"{path!r}: empty segment")
            segments.append(rest[:cut])
            rest = rest[cut:]
        if rest.startswith(":"):
            verb, rest = rest[1:], ""
            if not verb or "/" in verb:
                raise ValueError(f"{path!r}: bad custom verb")
        elif rest.startswith("/"):
            rest = rest[1:]
            if not rest:
                raise ValueError(f"{path!r}: trailing /")
        elif rest:
            raise ValueError(f"{path!r}: a variable must fill a whole segment")
    return Template(tuple(segments), tuple(variables), verb)


def _matches_any(segment: str) -> bool:
    return segment in ("*", "**")


def could_both_match(a: Binding, b: Binding) -> bool:
    """True when one HTTP request could match both bindings: same HTTP method and custom verb, and at every
    position equal literals or a variable (a `**` matches any number of segments)."""
    if a.http_method != b.http_method:
        return False
    ta, tb = parse_template(a.path), parse_template(b.path)
    if ta.verb != tb.verb:
        return False
    return _segments_overlap(ta.segments, tb.segments)


def _segments_overlap(x: tuple[str, ...], y: tuple[str, ...]) -> bool:
    if not x or not y:
        return x == y or x == ("**",) or y == ("**",)
    if x[0] == "**":
        return any(_segments_overlap(x[1:], y[i:]) for i in range(len(y) + 1))
    if y[0] == "**":
        return _segments_overlap(y, x)
    if x[0] == y[0] or _matches_any(x[0]) or _matches_any(y[0]):
        return _segments_overlap(x[1:], y[1:])
    return False


def field_at(message: Descriptor, path: str) -> FieldDescriptor | None:
    """The field a dotted path names in `message`, through singular message fields; None when it names none."""
    field = None
    current: Descriptor | None = message
    for name in path.split("."):
        if current is None or (field is not None and field.is_repeated):
            return None
        field = current.fields_by_name.get(name)
        if field is None:
            return None
        current = field.message_type
    return field


def binding_problems(binding: Binding) -> list[str]:
    """What is wrong with one binding on its own (empty when nothing)."""
    problems = []
    method, request = binding.method, binding.method.input_type
    try:
        template = parse_template(binding.path)
    except ValueError as exc:
        return [f"{binding}: {exc}"]
    if template.segments[:1] != ("v1",):
        problems.append(f"{binding}: not under /v1/")
    if len(set(template.variables)) != len(template.variables):
        problems.append(f"{binding}: a field is bound twice")
    for variable in template.variables:
        field = field_at(request, variable)
        if field is None:
            problems.append(f"{binding}: path variable {{{variable}}} names no field of {request.full_name}")
        elif field.is_repeated or field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            problems.append(f"{binding}: path variable {{{variable}}} is not a singular scalar field")
    if binding.http_method in ("get", "delete") and binding.body:
        problems.append(f"{binding}: a {binding.http_method.upper()} has no body")
    if binding.http_method in ("post", "put", "patch") and binding.body != "*":
        problems.append(f'{binding}: body must be "*" (the whole request) like every other write')
    if method.server_streaming and binding.http_method != "get":
        problems.append(f"{binding}: a server stream is a GET")
    if method.client_streaming and binding.http_method != "post":
        problems.append(f"{binding}: a client stream is a POST")
    if binding.http_method == "get" and not method.name.startswith(READ_ONLY_VERBS):
        problems.append(f"{binding}: a mutating RPC is never a GET")
    return problems


def collisions(bindings: list[Binding]) -> list[str]:
    return [
        f"{a} and {b} could match the same request"
        for i, a in enumerate(bindings)
        for b in bindings[i + 1 :]
        if could_both_match(a, b)
    ]


def _rules(rule: http_pb2.HttpRule) -> Iterator[http_pb2.HttpRule]:
    yield rule
    for extra in rule.additional_bindings:
        yield from _rules(extra)


def bindings_of(method: MethodDescriptor) -> list[Binding]:
    """Every binding of the RPC, additional ones included; empty when it has no google.api.http option."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    found = []
    for rule in _rules(options.Extensions[annotations_pb2.http]):
        pattern = rule.WhichOneof("pattern")
        if pattern in HTTP_METHODS:
            found.append(Binding(method, pattern, getattr(rule, pattern), rule.body))
        elif pattern == "custom":
            found.append(Binding(method, rule.custom.kind.lower(), rule.custom.path, rule.body))
        else:
            found.append(Binding(method, "", "", rule.body))
    return found


def _methods(pos_files: list[FileDescriptor]) -> list[MethodDescriptor]:
    return [
        method
        for file in pos_files
        for service in file.services_by_name.values()
        if service.full_name in SERVICES
        for method in service.methods
    ]


@pytest.fixture(scope="module")
def all_bindings(pos_files: list[FileDescriptor]) -> list[Binding]:
    return [binding for method in _methods(pos_files) for binding in bindings_of(method)]


def test_the_four_services_are_all_there(pos_files: list[FileDescriptor]) -> None:
    assert {m.containing_service.full_name for m in _methods(pos_files)} == set(SERVICES)
    assert len(_methods(pos_files)) == 32


def test_every_rpc_has_an_http_binding(pos_files: list[FileDescriptor]) -> None:
    missing = [m.full_name for m in _methods(pos_files) if not bindings_of(m)]
    assert not missing, f"RPCs without a google.api.http option: {missing}"
    unset = [str(b.method.full_name) for m in _methods(pos_files) for b in bindings_of(m) if not b.http_method]
    assert not unset, f"google.api.http options without a verb and path: {unset}"


def test_every_binding_binds_fields_of_its_request(all_bindings: list[Binding]) -> None:
    problems = [problem for binding in all_bindings for problem in binding_problems(binding)]
    assert not problems, "\n".join(problems)


def test_no_two_bindings_could_match_one_request(all_bindings: list[Binding]) -> None:
    found = collisions(all_bindings)
    assert not found, "\n".join(found)


def test_the_descriptor_set_envoy_loads_has_every_binding_the_error_details_and_the_comments(
    pos_files: list[FileDescriptor],
) -> None:
    """`make proto` writes it (the pos_files fixture regenerates stale code first): the transcoder needs the
    bindings and every google.rpc detail type, the OpenAPI generator the comments."""
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    files = {file.name: file for file in descriptor_set.file}
    for name in (
        "google/api/annotations.proto",
        "google/api/http.proto",
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
        "google/rpc/code.proto",
        "google/protobuf/any.proto",
    ):
        assert name in files, f"{name} missing from {DESCRIPTOR_SET.name}"
    for method in _methods(pos_files):
        file = files[method.containing_service.file.name]
        assert file.source_code_info.location, f"{file.name}: no source info (comments)"
        service = next(s for s in file.service if f"{file.package}.{s.name}" == method.containing_service.full_name)
        options = next(m for m in service.method if m.name == method.name).options
        assert options.HasExtension(annotations_pb2.http), f"{method.full_name}: no binding in the descriptor set"


# The checks above catch what they are meant to: each on a made-up binding.


def _method(pos_files: list[FileDescriptor], full_name: str) -> MethodDescriptor:
    return next(m for m in _methods(pos_files) if m.full_name == full_name)


def test_the_checks_catch_a_variable_naming_no_field(pos_files: list[FileDescriptor]) -> None:
    method = _method(pos_files, "pos.checkout.v1.CheckoutService.GetBasket")
    problems = binding_problems(Binding(method, "get", "/v1/baskets/{basket}", ""))
    assert problems and "names no field" in problems[0]
    nested = _method(pos_files, "pos.customer.v1.CustomerService.UpdateCustomer")
    assert not binding_problems(Binding(nested, "patch", "/v1/customers/{customer.customer_id}", "*"))
    assert binding_problems(Binding(nested, "patch", "/v1/customers/{customer.id}", "*"))


def test_the_checks_catch_colliding_and_ambiguous_bindings(pos_files: list[FileDescriptor]) -> None:
    get_basket = _method(pos_files, "pos.checkout.v1.CheckoutService.GetBasket")
    get_sale = _method(pos_files, "pos.checkout.v1.CheckoutService.GetSale")
    same = [Binding(get_basket, "get", "/v1/baskets/{basket_id}", ""), Binding(get_sale, "get", "/v1/baskets/{x}", "")]
    assert collisions(same)
    literal_under_variable = [
        Binding(get_basket, "get", "/v1/baskets/{basket_id}", ""),
        Binding(get_sale, "get", "/v1/baskets/recent", ""),
    ]
    assert collisions(literal_under_variable)
    fine = [
        Binding(get_basket, "get", "/v1/baskets/{basket_id}", ""),
        Binding(get_sale, "get", "/v1/baskets:recent", ""),
        Binding(get_sale, "post", "/v1/baskets/{basket_id}", "*"),
        Binding(get_sale, "get", "/v1/baskets/{basket_id}:verb", ""),
    ]
    assert not collisions(fine)


def test_a_missing_binding_is_reported(pos_files: list[FileDescriptor]) -> None:
    from google.protobuf import descriptor_pool
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    pool = descriptor_pool.DescriptorPool()
    proto = FileDescriptorProto(name="bare.proto", package="bare")
    proto.message_type.add(name="PingRequest")
    proto.message_type.add(name="PingResponse")
    proto.service.add(name="Bare").method.add(
        name="Ping", input_type=".bare.PingRequest", output_type=".bare.PingResponse"
    )
    pool.Add(proto)
    assert bindings_of(pool.FindMethodByName("bare.Bare.Ping")) == []
