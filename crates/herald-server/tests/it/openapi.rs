//! The OpenAPI description, `docs/openapi.json` (served at `GET /v1/openapi.json`), held true:
//!
//! - it is valid OpenAPI 3.1: checked against the official schema of the OpenAPI Initiative
//!   (`tests/openapi/oas-3.1-schema-2022-10-07.json`, see the README beside it), and every schema
//!   in it compiles as JSON Schema 2020-12 with every `$ref` resolved;
//! - every example in it is valid against its schema;
//! - its operations are the server's routes, no more and no fewer: the routes are read from the
//!   source (`routes.rs`, `demo.rs`, the lean stream path of `connection.rs`) and probed on a
//!   running server (each documented one answers other than the router's fallbacks, each
//!   undocumented method of a documented path answers 405);
//! - a real server, taken through a scenario (publish, batch, jobs, presence, topics, inbox,
//!   the three transports, sign-out, and refusals 400/401/403/404/405/409/413/415/429), gives
//!   answers that each validate against the schema of their route and status, error codes
//!   included, and events that each validate against `SseEvent`, `WsMessage` or `PollAnswer`.
//!   Every operation's success is seen at least once.
//!
//! And beyond this module: the support helpers (`TestServer::get`, `post_api`, `delete`,
//! `publish`, `poll`: [`Spec::assert_answer_at`]), the SSE reader (`Sse`: [`checked_sse`]) and
//! the WebSocket tests' `next_event` check what they read against the description, so the whole
//! integration suite's answers and events are checked too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use herald_core::{Limits, Retention};
use herald_server::ServerSettings;
use jsonschema::{Draft, Validator};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

const SPEC_TEXT: &str = include_str!("../../../../docs/openapi.json");
/// <https://spec.openapis.org/oas/3.1/schema/2022-10-07>; see `tests/openapi/README.md`.
const OAS_3_1_SCHEMA: &str = include_str!("../openapi/oas-3.1-schema-2022-10-07.json");

/// The source files that build routers: each `.route(…)` in them is read. A router built in
/// any other file fails `every_route_is_described` until its file is named here or in
/// [`NOT_PUBLIC_ROUTE_FILES`].
const ROUTE_FILES: [&str; 2] = ["routes.rs", "demo.rs"];
/// Files whose routes are the dev-mode demo's: described, and marked `x-herald-dev-only`.
const DEV_ONLY_ROUTE_FILES: [&str; 1] = ["demo.rs"];
/// Files with routers that are not part of the public HTTP API: the admin listener's (its
/// routes are in docs/OPERATIONS.md, "Metrics" and "Admin page").
const NOT_PUBLIC_ROUTE_FILES: [&str; 2] = ["admin/mod.rs", "admin/ui.rs"];

const METHODS: [&str; 5] = ["get", "post", "delete", "put", "patch"];

/// The description, parsed, with a validator per schema (built once, on first use).
pub struct Spec {
    pub doc: Value,
    validators: Mutex<HashMap<String, Arc<Validator>>>,
}

pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| Spec {
        doc: serde_json::from_str(SPEC_TEXT).expect("docs/openapi.json is JSON"),
        validators: Mutex::new(HashMap::new()),
    })
}

/// A JSON pointer's segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

impl Spec {
    /// The validator of the schema at `pointer` in the description. The schema is taken out
    /// with the description's `components` beside it, so that its `#/components/…` references
    /// resolve; formats (`date-time`) are checked.
    fn validator(&self, pointer: &str) -> Arc<Validator> {
        if let Some(validator) = self.validators.lock().unwrap().get(pointer) {
            return validator.clone();
        }
        let schema = self.doc.pointer(pointer).unwrap_or_else(|| panic!("no schema at {pointer}"));
        let mut root = match schema {
            Value::Object(map) => map.clone(),
            other => panic!("the schema at {pointer} is not an object: {other}"),
        };
        root.insert("components".into(), self.doc["components"].clone());
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .unwrap_or_else(|e| panic!("the schema at {pointer} does not compile: {e}"));
        let validator = Arc::new(validator);
        self.validators.lock().unwrap().insert(pointer.to_owned(), validator.clone());
        validator
    }

    /// Checks `instance` against the schema at `pointer`; the error lists every failure.
    pub fn check(&self, pointer: &str, instance: &Value) -> Result<(), String> {
        let validator = self.validator(pointer);
        let errors: Vec<String> =
            validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        if errors.is_empty() { Ok(()) } else { Err(errors.join("\n  ")) }
    }

    /// Panics unless `instance` is valid against the component schema `name`.
    #[track_caller]
    pub fn assert_component(&self, name: &str, instance: &Value) {
        if let Err(errors) = self.check(&format!("/components/schemas/{name}"), instance) {
            panic!("not a valid {name}: {instance}\n  {errors}");
        }
    }

    /// The operation `method template`, e.g. `get /v1/users/{user}/presence`.
    pub fn operation(&self, method: &str, template: &str) -> Option<&Value> {
        self.doc["paths"].get(template)?.get(method)
    }

    /// Every `(method, path template)` the description has.
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if item.get(method).is_some() {
                    out.insert((method.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    /// The path template of the concrete `path` (`/v1/users/alice/presence` →
    /// `/v1/users/{user}/presence`): the one whose segments match, a `{param}` any one segment,
    /// the most literal segments winning (`/v1/inbox/counts` over `/v1/inbox/{seq}`).
    pub fn template_of(&self, path: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &String)> = None;
        for template in self.doc["paths"].as_object().unwrap().keys() {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut literal = 0;
            let matches = parts.iter().zip(&segments).all(|(part, segment)| {
                if part.starts_with('{') {
                    !segment.is_empty()
                } else {
                    literal += 1;
                    part == segment
                }
            });
            if matches && best.is_none_or(|(most, _)| literal > most) {
                best = Some((literal, template));
            }
        }
        best.map(|(_, template)| template.clone())
    }

    /// [`Spec::assert_answer`] for a concrete path. A path no template matches, or a method
    /// its path does not have, must have been answered by the router's fallbacks: an `Error`
    /// with 404 `not_found` or 405 `method_not_allowed`.
    #[track_caller]
    pub fn assert_answer_at(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &Value,
    ) {
        match self.template_of(path) {
            Some(template) if self.operation(method, &template).is_some() => {
                self.assert_answer(method, &template, status, content_type, body)
            }
            _ => {
                self.assert_component("Error", body);
                let code = body["error"]["code"].as_str();
                assert!(
                    matches!((status, code), (404, Some("not_found")) | (405, Some("method_not_allowed"))),
                    "{method} {path}: not described, yet answered {status} {body}"
                );
            }
        }
    }

    /// Panics unless an answer of `status` with `content_type` and `body` (`Null` when empty or
    /// not JSON) is one that `method template` documents: its status is listed, its content
    /// type too, and a JSON body validates against that response's schema.
    #[track_caller]
    pub fn assert_answer(
        &self,
        method: &str,
        template: &str,
        status: u16,
        content_type: Option<&str>,
        body: &Value,
    ) {
        let operation = self
            .operation(method, template)
            .unwrap_or_else(|| panic!("{method} {template} is not in docs/openapi.json"));
        let Some(response) = operation["responses"].get(status.to_string()) else {
            panic!("{method} {template} answered {status}, which docs/openapi.json does not list: {body}");
        };
        let content = response.get("content").and_then(Value::as_object);
        let Some(content) = content else {
            assert!(
                body.is_null(),
                "{method} {template} {status} has no content in docs/openapi.json, but answered {body}"
            );
            return;
        };
        let content_type =
            content_type.unwrap_or_else(|| panic!("{method} {template} {status}: no content type"));
        let media = content
            .keys()
            .find(|media| content_type.split(';').next().unwrap().trim() == media.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "{method} {template} {status} answered {content_type}, docs/openapi.json says {content:?}"
                )
            });
        if media == "application/json" {
            let pointer = format!(
                "/paths/{}/{method}/responses/{status}/content/{}/schema",
                escape(template),
                escape(media)
            );
            if let Err(errors) = self.check(&pointer, body) {
                panic!(
                    "{method} {template} {status}: the answer does not match docs/openapi.json: {body}\n  {errors}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The description itself

#[test]
fn the_description_is_valid_openapi_3_1() {
    let spec = spec();
    let schema: Value = serde_json::from_str(OAS_3_1_SCHEMA).unwrap();
    let validator = jsonschema::options().with_draft(Draft::Draft202012).build(&schema).unwrap();
    let errors: Vec<String> =
        validator.iter_errors(&spec.doc).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "docs/openapi.json is not valid OpenAPI 3.1:\n{}", errors.join("\n"));
    assert!(spec.doc["openapi"].as_str().unwrap().starts_with("3.1."));

    // The official schema does not look inside Schema Objects: every one must compile as JSON
    // Schema 2020-12, with every `$ref` resolved.
    for name in spec.doc["components"]["schemas"].as_object().unwrap().keys() {
        spec.validator(&format!("/components/schemas/{name}"));
    }
    let mut pointers = Vec::new();
    collect_media_schemas(&spec.doc["paths"], "/paths", &mut pointers);
    assert!(pointers.len() > 60, "{pointers:?}");
    for (schema, _) in &pointers {
        spec.validator(schema);
    }
    // Every `$ref` points at something.
    let mut refs = Vec::new();
    collect_refs(&spec.doc, &mut refs);
    for reference in refs {
        let pointer =
            reference.strip_prefix('#').unwrap_or_else(|| panic!("a $ref outside the file: {reference}"));
        assert!(spec.doc.pointer(pointer).is_some(), "$ref {reference} points at nothing");
    }
}

/// `(schema pointer, example pointer if any)` of every media type under `value`.
fn collect_media_schemas(value: &Value, at: &str, out: &mut Vec<(String, Option<String>)>) {
    let Value::Object(map) = value else {
        if let Value::Array(items) = value {
            for (i, item) in items.iter().enumerate() {
                collect_media_schemas(item, &format!("{at}/{i}"), out);
            }
        }
        return;
    };
    if let Some(Value::Object(content)) = map.get("content") {
        for (media, object) in content {
            if object.get("schema").is_some() {
                let base = format!("{at}/content/{}", escape(media));
                let example = object.get("example").map(|_| format!("{base}/example"));
                out.push((format!("{base}/schema"), example));
            }
        }
    }
    for (key, child) in map {
        if key != "content" {
            collect_media_schemas(child, &format!("{at}/{}", escape(key)), out);
        }
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("$ref", Value::String(reference)) => out.push(reference.clone()),
                    _ => collect_refs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}

#[test]
fn every_example_validates_against_its_schema() {
    let spec = spec();
    let mut checked = 0;
    let mut pointers = Vec::new();
    collect_media_schemas(&spec.doc["paths"], "/paths", &mut pointers);
    for (schema, example) in pointers {
        let Some(example) = example else { continue };
        let instance = spec.doc.pointer(&example).unwrap();
        if schema.contains("/text~1event-stream/") {
            // An SSE body: each event in it is an `SseEvent`.
            for event in parse_sse_text(instance.as_str().unwrap()) {
                spec.assert_component("SseEvent", &event);
            }
        } else if let Err(errors) = spec.check(&schema, instance) {
            panic!("the example {example} does not match its schema:\n  {errors}");
        }
        checked += 1;
    }
    for (name, schema) in spec.doc["components"]["schemas"].as_object().unwrap() {
        for example in schema.get("examples").and_then(Value::as_array).into_iter().flatten() {
            spec.assert_component(name, example);
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} examples");
}

/// The events of an SSE text, each `{"event", "id"?, "data"}`.
fn parse_sse_text(text: &str) -> Vec<Value> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut event = serde_json::Map::new();
        for line in block.lines() {
            if let Some(id) = line.strip_prefix("id: ") {
                event.insert("id".into(), id.into());
            } else if let Some(name) = line.strip_prefix("event: ") {
                event.insert("event".into(), name.into());
            } else if let Some(data) = line.strip_prefix("data: ") {
                event.insert("data".into(), serde_json::from_str(data).unwrap());
            }
        }
        if !event.is_empty() {
            events.push(Value::Object(event));
        }
    }
    events
}

/// Every code an error of the server can carry is in `ErrorCode`, and every code there is
/// answered somewhere. The codes are read from the source: the string literal that follows an
/// `ApiError` constructor's status (or is its first argument), and the `=> "code"` arms of
/// error.rs's conversions.
#[test]
fn the_error_codes_are_the_servers() {
    let spec = spec();
    let documented: BTreeSet<String> = spec.doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let mut in_source = BTreeSet::new();
    for (name, text) in server_sources() {
        // The admin listener's codes (the admin page's `not_signed_in`, `csrf_refused`…) are not
        // the public API's: OPERATIONS.md ("Admin page") lists them.
        if name.starts_with("admin/") {
            continue;
        }
        let text = without_tests(&text);
        // Where a code is: the first string literal among these arguments of these calls.
        let openers: [(&str, std::ops::Range<usize>); 7] = [
            ("ApiError::new(", 0..2),
            ("Self::new(", 0..2),
            ("bad_request(", 0..1),
            ("unauthorized(", 0..1),
            ("refuse(", 0..2),
            ("whole_number(", 2..3),
            ("=> ", 0..1),
        ];
        for (opener, positions) in openers {
            let mut rest = text.as_str();
            while let Some(at) = rest.find(opener) {
                rest = &rest[at + opener.len()..];
                let window: String = rest.chars().take(160).collect();
                let args: Vec<&str> = window.splitn(4, ',').collect();
                let candidates = args.get(positions.clone()).unwrap_or_default();
                for arg in candidates {
                    let arg = arg.trim();
                    if let Some(code) = arg.strip_prefix('"').and_then(|a| a.split('"').next())
                        && !code.is_empty()
                        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        && (opener != "=> " || name == "error.rs")
                    {
                        in_source.insert(code.to_owned());
                        break;
                    }
                }
            }
        }
    }
    // Codes held in constants.
    in_source.insert("forbidden_origin".to_owned());
    let undocumented: Vec<_> = in_source.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "error codes the server answers but docs/openapi.json lacks: {undocumented:?}"
    );
    let unused: Vec<_> = documented.difference(&in_source).collect();
    assert!(unused.is_empty(), "error codes in docs/openapi.json that no code answers: {unused:?}");
}

/// Every `.rs` file under `crates/herald-server/src`, as (file name, text).
fn server_sources() -> Vec<(String, String)> {
    fn walk(src: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(src, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                // Its path under src/ (`routes.rs`, `admin/mod.rs`): a bare `mod.rs` names nothing.
                let name = path.strip_prefix(src).unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    walk(&src, &src, &mut out);
    out
}

/// The text before the file's `#[cfg(test)]` module.
fn without_tests(text: &str) -> String {
    text.split("#[cfg(test)]\nmod tests").next().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Routes

/// The `(method, path)` of every `.route("path", method(handler)…)` in `text`. Panics on a
/// `.route(` it cannot read, so that no route slips past.
fn routes_in(file: &str, text: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let path =
            rest.trim_start().strip_prefix('"').and_then(|r| r.split('"').next()).unwrap_or_else(|| {
                panic!("{file}: a `.route(` whose path is not a literal: {}", &rest[..40])
            });
        // The call's arguments, up to its closing parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .unwrap();
        let args = &rest[..end];
        let mut found = false;
        for method in METHODS {
            let call = format!("{method}(");
            let mut from = 0;
            while let Some(at) = args[from..].find(&call) {
                let at = from + at;
                let before = args[..at].chars().last();
                if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                    routes.insert((method.to_owned(), path.to_owned()));
                    found = true;
                }
                from = at + call.len();
            }
        }
        assert!(found, "{file}: no method in the route {path:?}: {args}");
    }
    routes
}

#[test]
fn every_route_is_described_and_every_description_is_a_route() {
    let spec = spec();
    let mut in_code = BTreeSet::new();
    let mut dev_only = BTreeSet::new();
    for (file, text) in server_sources() {
        let text = without_tests(&text);
        let routes = routes_in(&file, &text);
        if routes.is_empty() || NOT_PUBLIC_ROUTE_FILES.contains(&file.as_str()) {
            continue;
        }
        assert!(
            ROUTE_FILES.contains(&file.as_str()),
            "{file} builds routes ({routes:?}): describe them in docs/openapi.json and name the file in \
             ROUTE_FILES, or name it in NOT_PUBLIC_ROUTE_FILES if they are not the public API"
        );
        if DEV_ONLY_ROUTE_FILES.contains(&file.as_str()) {
            dev_only.extend(routes.iter().cloned());
        }
        in_code.extend(routes);
    }
    assert!(in_code.len() >= 30, "too few routes read from the source: {in_code:?}");

    // The lean path (connection.rs) serves a stream that opens its connection: its method and
    // path must be a route of the router too (the same route, served twice), and described.
    let connection =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/connection.rs")).unwrap();
    let lean_path = connection
        .split("uri.path() == \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("connection.rs names the lean path");
    assert!(connection.contains("self.parts.method == http::Method::GET"), "the lean path is a GET");
    assert!(
        in_code.contains(&("get".to_owned(), lean_path.to_owned())),
        "lean path {lean_path} is not a route"
    );
    let lean = spec.operation("get", lean_path).expect("the lean path is described");
    assert!(lean["description"].as_str().unwrap().contains("lean path"));

    let described = spec.operations();
    let undescribed: Vec<_> = in_code.difference(&described).collect();
    assert!(undescribed.is_empty(), "routes without a description in docs/openapi.json: {undescribed:?}");
    let unrouted: Vec<_> = described.difference(&in_code).collect();
    assert!(unrouted.is_empty(), "described in docs/openapi.json but no route: {unrouted:?}");
    for (method, path) in &described {
        let marked = spec.operation(method, path).unwrap().get("x-herald-dev-only") == Some(&json!(true));
        let dev = dev_only.contains(&(method.clone(), path.clone()));
        assert_eq!(
            marked, dev,
            "{method} {path}: x-herald-dev-only must be set exactly on the demo's routes"
        );
    }
}

/// A concrete path for a template: each `{param}` filled with a sample value.
fn sample_path(template: &str) -> String {
    template
        .replace("{user}", "alice")
        .replace("{session}", "s1")
        .replace("{topic}", "room:1")
        .replace("{seq}", "1")
        .replace("{id}", "job-1")
}

/// The running server has every described route (dev mode with the demo, so its routes too):
/// each answers something other than the router's fallbacks, and every other method of a
/// described path answers 405.
#[tokio::test]
async fn every_description_is_served_and_nothing_else_on_its_paths() {
    let mut settings = settings();
    settings.dev_mode = true;
    settings.demo = true;
    let server = TestServer::with_settings(settings).await;
    let spec = spec();
    // A fresh connection per request: a `GET /v1/stream` takes the lean path, the rest hyper.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let described = spec.operations();
    let paths: BTreeSet<&String> = described.iter().map(|(_, path)| path).collect();
    for path in paths {
        for method in METHODS {
            let url = format!("{}{}", server.url, sample_path(path));
            let request = http.request(method.to_uppercase().parse().unwrap(), &url);
            // Short-lived: a stream that opened (it cannot: no token) would hold the test.
            let response = tokio::time::timeout(EVENT_WAIT, request.send()).await.unwrap().unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let fallback = matches!(body["error"]["code"].as_str(), Some("not_found" | "method_not_allowed"));
            if described.contains(&(method.to_owned(), path.clone())) {
                assert!(
                    !fallback,
                    "{method} {path} is described but the router does not have it: {status} {body}"
                );
            } else {
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (405, Some("method_not_allowed")),
                    "{method} {path} is not described but answers"
                );
            }
        }
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Real answers

/// Who a request is from.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    ApiKey,
    Token(&'a str),
    Raw(&'a str),
}

/// Requests to a server, each answer checked against the description; the operations and
/// statuses seen are kept for the coverage check.
struct Checked<'a> {
    server: &'a TestServer,
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

impl<'a> Checked<'a> {
    fn new(server: &'a TestServer) -> Self {
        Self { server, seen: Mutex::new(BTreeSet::new()) }
    }

    /// `method template` with `params` filled in (percent-encoded, in order), `query`, `auth`,
    /// extra `headers` and a JSON `body`; checks the answer; returns status and body. (Every
    /// part of the request is an argument, so that each call reads as the request it sends.)
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        method: &str,
        template: &str,
        params: &[&str],
        query: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut path = template.to_owned();
        for param in params {
            let start = path.find('{').expect("more params than placeholders");
            let end = path[start..].find('}').unwrap() + start;
            path.replace_range(start..=end, &enc(param));
        }
        let url = if query.is_empty() {
            format!("{}{path}", self.server.url)
        } else {
            format!("{}{path}?{query}", self.server.url)
        };
        let mut request = self.server.http.request(method.to_uppercase().parse().unwrap(), url);
        request = match auth {
            Auth::None => request,
            Auth::ApiKey => request.bearer_auth(API_KEY),
            Auth::Token(token) => request.bearer_auth(token),
            Auth::Raw(value) => request.header("authorization", value),
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        self.check(method, template, response).await
    }

    /// Checks a response to `method template` against the description.
    async fn check(&self, method: &str, template: &str, response: reqwest::Response) -> (u16, Value) {
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.bytes().await.unwrap();
        let body = if content_type.as_deref() == Some("application/json") {
            serde_json::from_slice(&bytes).expect("an application/json answer is JSON")
        } else if bytes.is_empty() {
            Value::Null
        } else {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        };
        let checked_body =
            if content_type.as_deref() == Some("application/json") { body.clone() } else { Value::Null };
        spec().assert_answer(method, template, status, content_type.as_deref(), &checked_body);
        self.seen.lock().unwrap().insert((method.to_owned(), template.to_owned(), status));
        (status, body)
    }

    /// Checks an answer read elsewhere (a stream's, a WebSocket handshake's): its status and
    /// content type.
    fn saw(&self, method: &str, template: &str, status: u16, content_type: Option<&str>) {
        spec().assert_answer(method, template, status, content_type, &Value::Null);
        self.seen.lock().unwrap().insert((method.to_owned(), template.to_owned(), status));
    }

    async fn api(&self, method: &str, template: &str, params: &[&str], body: Option<&Value>) -> (u16, Value) {
        self.call(method, template, params, "", Auth::ApiKey, &[], body).await
    }
}

/// An SSE event as `{"event", "id"?, "data"}`, checked against `SseEvent`.
pub fn checked_sse(event: &SseEvent) -> Value {
    let mut value = json!({ "event": event.event, "data": event.data });
    if let Some(resume) = &event.resume {
        value["id"] = resume.clone().into();
    }
    spec().assert_component("SseEvent", &value);
    value
}

/// The next SSE event, checked.
async fn next_sse(sse: &mut Sse) -> Value {
    checked_sse(&sse.next().await.expect("the stream ended"))
}

#[tokio::test]
async fn real_answers_match_the_description() {
    // A publish bound so small that an `inbox: true` publish of 100 bytes to two followers is
    // done by a job.
    let limits = Limits { publish_bytes_max: 150, ..Limits::default() };
    // With a VAPID key, so that the Web Push routes answer.
    let mut with_push = settings();
    let vapid = herald_server::push::VapidKey::generate("mailto:ops@example.com").unwrap();
    with_push.push.vapid = Some(Arc::new(vapid));
    let server = TestServer::with(limits, with_push, memory(Retention::default())).await;
    let c = Checked::new(&server);
    let claims = json!({"sub": "alice", "sid": "laptop", "iat": now_unix(), "exp": now_unix() + 600, "topics": ["room:*"]});
    let alice = sign(&claims);
    let alice_unclaimed = server.token("alice", Some("laptop"));

    // Meta.
    let (status, health) = c.call("get", "/healthz", &[], "", Auth::None, &[], None).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, served) = c.call("get", "/v1/openapi.json", &[], "", Auth::None, &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(served, spec().doc, "GET /v1/openapi.json serves docs/openapi.json");
    let response = server.http.get(format!("{}/v1/openapi.json", server.url)).send().await.unwrap();
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let (status, _) =
        c.call("get", "/v1/openapi.json", &[], "", Auth::None, &[("if-none-match", &etag)], None).await;
    assert_eq!(status, 304);
    assert_eq!(c.call("get", "/herald.js", &[], "", Auth::None, &[], None).await.0, 200);
    assert_eq!(c.call("get", "/herald.d.ts", &[], "", Auth::None, &[], None).await.0, 200);
    assert_eq!(c.call("get", "/herald-sw.js", &[], "", Auth::None, &[], None).await.0, 200);
    assert_eq!(c.api("get", "/v1/cluster", &[], None).await.0, 200);

    // A stream, a WebSocket and a poller of alice's, the stream following topics and the inbox.
    let (status, _) = c
        .call(
            "post",
            "/v1/topics/listen",
            &[],
            "",
            Auth::ApiKey,
            &[],
            Some(&json!({"topics": ["post:1"], "user": "alice"})),
        )
        .await;
    assert_eq!(status, 200);
    let mut sse = server.sse(&alice, "inbox=1&topics=room:1").await;
    c.saw("get", "/v1/stream", 200, Some("text/event-stream"));
    let hello = next_sse(&mut sse).await;
    assert_eq!(hello["event"], "hello");
    let client = hello["data"]["client"].as_str().unwrap().to_owned();
    let ws_url =
        format!("{}/v1/ws?token={alice}&inbox=1&topics=room:1", server.url.replacen("http://", "ws://", 1));
    let (mut ws, response) =
        tokio_tungstenite::connect_async(ws_url.into_client_request().unwrap()).await.unwrap();
    assert_eq!(response.status(), 101);
    c.saw("get", "/v1/ws", 101, None);
    let ws_hello = next_ws(&mut ws).await;
    assert_eq!(ws_hello["event"], "hello");

    // Web Push: the key, a browser's subscription kept, listed, removed by the publisher and
    // by the browser.
    assert_eq!(c.call("get", "/v1/push/vapid-public-key", &[], "", Auth::None, &[], None).await.0, 200);
    let browser = crate::push::BrowserKeys::new().subscription("https://fcm.googleapis.com/fcm/send/abc");
    let subscribe = |body: Value| {
        let (c, alice) = (&c, &alice);
        async move {
            c.call("post", "/v1/push/subscriptions", &[], "", Auth::Token(alice), &[], Some(&body)).await
        }
    };
    let (status, subscribed) = subscribe(browser.clone()).await;
    assert_eq!(status, 201);
    let (status, listed) = c.api("get", "/v1/users/{user}/push-subscriptions", &["alice"], None).await;
    assert_eq!((status, &listed["subscriptions"][0]["id"]), (200, &subscribed["id"]));
    let id = subscribed["id"].as_str().unwrap();
    assert_eq!(
        c.api("delete", "/v1/users/{user}/push-subscriptions/{id}", &["alice", id], None).await.0,
        204
    );
    assert_eq!(subscribe(browser.clone()).await.0, 201);
    let endpoint = json!({"endpoint": browser["endpoint"]});
    let unsubscribe =
        c.call("delete", "/v1/push/subscriptions", &[], "", Auth::Token(&alice), &[], Some(&endpoint)).await;
    assert_eq!(unsubscribe.0, 204);

    // Publishing: a durable one, an ephemeral one, a topic event, a batch.
    let publish = json!({"to": {"user": "alice"}, "type": "message.new", "data": {"text": "hi"}, "idempotency_key": "k1"});
    let (status, receipt) = c.api("post", "/v1/notify", &[], Some(&publish)).await;
    assert_eq!(status, 200);
    let seq = receipt["notifications"][0]["seq"].as_u64().unwrap();
    assert_eq!(c.api("post", "/v1/notify", &[], Some(&publish)).await.1, receipt, "idempotent");
    let ephemeral = json!({"to": {"user": "alice", "session": "laptop"}, "type": "typing", "durable": false});
    assert_eq!(c.api("post", "/v1/notify", &[], Some(&ephemeral)).await.0, 200);
    let topic_event = json!({"to": {"topic": "room:1"}, "type": "message", "data": {"text": "hello room"}});
    assert_eq!(c.api("post", "/v1/notify", &[], Some(&topic_event)).await.0, 200);
    let batch = json!({"notifications": [
        {"to": {"users": ["alice", "bob"]}, "type": "digest"},
        {"to": {"client": "nobody-has-this-client-id"}, "type": "x"},
        {"to": {"user": "alice"}, "unknown": 1},
    ]});
    let (status, answer) = c.api("post", "/v1/notify/batch", &[], Some(&batch)).await;
    assert_eq!((status, answer["failed"].as_u64()), (200, Some(2)), "{answer}");

    // Every event they made, on each transport, is a described event.
    let wanted = BTreeSet::from(["notification".to_owned(), "topic".to_owned(), "inbox".to_owned()]);
    let mut names = BTreeSet::new();
    while !names.is_superset(&wanted) {
        let event = next_sse(&mut sse).await;
        names.insert(event["event"].as_str().unwrap().to_owned());
    }
    let mut names = BTreeSet::new();
    while !names.is_superset(&wanted) {
        let frame = next_ws(&mut ws).await;
        names.insert(frame["event"].as_str().unwrap().to_owned());
    }
    // A stream on a connection that served a request first (hyper's path, not the lean one).
    let mut hyper_sse = server.sse_via(StreamPath::Hyper, &alice, "", None).await;
    assert_eq!(next_sse(&mut hyper_sse).await["event"], "hello");
    drop(hyper_sse);
    let (status, poll) = c
        .call(
            "get",
            "/v1/poll",
            &[],
            "after=0&timeout=0&inbox=1&topics=room:1",
            Auth::Token(&alice),
            &[],
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(poll["notifications"].as_array().unwrap().len() >= 2, "{poll}");
    assert!(poll["counts"].is_object() && poll["topics"].is_array(), "{poll}");

    // Followers' inboxes by a job (the publish bound is small).
    let (status, _) = c
        .call(
            "post",
            "/v1/topics/listen",
            &[],
            "",
            Auth::ApiKey,
            &[],
            Some(&json!({"topics": ["post:1"], "user": "bob"})),
        )
        .await;
    assert_eq!(status, 200);
    let fanout = json!({"to": {"topic": "post:1"}, "inbox": true, "type": "comment", "data": {"text": "x".repeat(90)}});
    let (status, started) = c.api("post", "/v1/notify", &[], Some(&fanout)).await;
    assert_eq!(status, 202, "{started}");
    let job = started["job"].as_str().unwrap();
    let (status, _) = c.api("get", "/v1/jobs/{id}", &[job], None).await;
    assert_eq!(status, 200);
    assert_eq!(c.api("get", "/v1/jobs/{id}", &["no-such-job"], None).await.0, 404);

    // The publisher's views.
    assert_eq!(c.api("get", "/v1/users/{user}/presence", &["alice"], None).await.0, 200);
    let (status, stored) = c
        .call(
            "get",
            "/v1/users/{user}/notifications",
            &["alice"],
            "after=0&limit=10",
            Auth::ApiKey,
            &[],
            None,
        )
        .await;
    assert_eq!((status, stored["notifications"][0]["seq"].as_u64()), (200, Some(seq)));
    assert_eq!(
        c.call("get", "/v1/users/{user}/notifications", &["alice"], "limit=0", Auth::ApiKey, &[], None)
            .await
            .0,
        400
    );
    let (status, listeners) = c.api("get", "/v1/topics/{topic}", &["room:1"], None).await;
    assert_eq!((status, listeners["clients"][0]["client"].as_str()), (200, Some(client.as_str())));
    assert_eq!(c.api("get", "/v1/topics/{topic}", &["bad topic"], None).await.0, 400);

    // Topics from the tab, at every scope, and from the backend.
    let listen = json!({"topics": ["room:2"]});
    let (status, _) = c.call("post", "/v1/listen", &[], "", Auth::Token(&alice), &[], Some(&listen)).await;
    assert_eq!(status, 400, "client scope needs X-Herald-Client");
    let tab = [("x-herald-client", client.as_str())];
    for (scope, headers) in [("client", &tab[..]), ("session", &[][..]), ("user", &[][..])] {
        let body = json!({"topics": ["room:2"], "scope": scope});
        let (status, now) =
            c.call("post", "/v1/listen", &[], "", Auth::Token(&alice), headers, Some(&body)).await;
        assert_eq!(status, 200, "{now}");
        let (status, _) =
            c.call("post", "/v1/unlisten", &[], "", Auth::Token(&alice), headers, Some(&body)).await;
        assert_eq!(status, 200);
    }
    let (status, _) =
        c.call("post", "/v1/listen", &[], "", Auth::Token(&alice_unclaimed), &tab, Some(&listen)).await;
    assert_eq!(status, 403, "the token has no topics claim");
    let too_many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    let body = json!({"topics": too_many, "client": client});
    assert_eq!(c.api("post", "/v1/topics/listen", &[], Some(&body)).await.0, 409);
    for body in [
        json!({"topics": ["room:3"], "client": client}),
        json!({"topics": ["room:3"], "user": "alice", "session": "laptop"}),
    ] {
        assert_eq!(c.api("post", "/v1/topics/listen", &[], Some(&body)).await.0, 200);
        assert_eq!(c.api("post", "/v1/topics/unlisten", &[], Some(&body)).await.0, 200);
    }

    // The inbox: the subscriber's own, and any user's with the API key.
    for (prefix, params, auth) in [
        ("/v1/inbox", &[][..], Auth::Token(&alice)),
        ("/v1/users/{user}/inbox", &["alice"][..], Auth::ApiKey),
    ] {
        let route = |tail: &str| format!("{prefix}{tail}");
        let (status, page) = c.call("get", &route(""), params, "limit=5", auth, &[], None).await;
        assert_eq!(status, 200);
        assert!(!page["notifications"].as_array().unwrap().is_empty(), "{page}");
        assert_eq!(c.call("get", &route(""), params, "status=nope", auth, &[], None).await.0, 400);
        assert_eq!(c.call("get", &route("/counts"), params, "", auth, &[], None).await.0, 200);
        let marks = [
            json!({"seqs": [seq], "as": "read"}),
            json!({"all_up_to": seq, "as": "seen"}),
            json!({"seqs": [seq], "as": "unread"}),
        ];
        for mark in &marks {
            assert_eq!(c.call("post", &route("/mark"), params, "", auth, &[], Some(mark)).await.0, 200);
        }
        let bad = json!({"seqs": [], "as": "read"});
        assert_eq!(c.call("post", &route("/mark"), params, "", auth, &[], Some(&bad)).await.0, 400);
        let mut with_seq = params.to_vec();
        with_seq.push("999999");
        assert_eq!(c.call("delete", &route("/{seq}"), &with_seq, "", auth, &[], None).await.0, 200);
        *with_seq.last_mut().unwrap() = "x";
        assert_eq!(c.call("delete", &route("/{seq}"), &with_seq, "", auth, &[], None).await.0, 400);
        assert_eq!(c.call("delete", &route(""), params, "all_up_to=0", auth, &[], None).await.0, 200);
        assert_eq!(c.call("delete", &route(""), params, "", auth, &[], None).await.0, 400);
    }
    // The marks reached the stream as `inbox` events; each is described.
    let mut inbox_events = 0;
    while let Ok(Some(event)) = sse.next_within(QUIET).await {
        inbox_events += usize::from(checked_sse(&event)["event"] == "inbox");
    }
    assert!(inbox_events >= 3, "{inbox_events} inbox events");

    // Refusals, each with a described status and code.
    // (method, route, query, auth, body, status)
    type Refusal<'a> = (&'a str, &'a str, &'a str, Auth<'a>, Option<Value>, u16);
    let refusals: Vec<Refusal> = vec![
        ("post", "/v1/notify", "", Auth::None, Some(publish.clone()), 401),
        ("post", "/v1/notify", "", Auth::Raw("Bearer wrong"), Some(publish.clone()), 401),
        ("post", "/v1/notify", "", Auth::Token(&alice), Some(publish.clone()), 401),
        ("post", "/v1/notify", "", Auth::ApiKey, Some(json!({"to": {"user": "a", "client": "b"}})), 400),
        ("post", "/v1/notify", "", Auth::ApiKey, Some(json!({"to": {"user": "a"}, "typo": 1})), 400),
        ("post", "/v1/notify", "", Auth::ApiKey, Some(json!({"to": {"client": "nobody"}})), 404),
        (
            "post",
            "/v1/notify",
            "",
            Auth::ApiKey,
            Some(json!({"to": {"user": "a"}, "data": "x".repeat(70_000)})),
            413,
        ),
        ("post", "/v1/notify/batch", "", Auth::ApiKey, Some(json!({"notifications": []})), 400),
        ("get", "/v1/poll", "timeout=61", Auth::Token(&alice), None, 400),
        ("get", "/v1/poll", "afer=1", Auth::Token(&alice), None, 400),
        ("get", "/v1/poll", "", Auth::None, None, 401),
        ("get", "/v1/poll", "", Auth::Raw("Bearer not.a.jwt"), None, 401),
        ("get", "/v1/inbox/counts", "", Auth::Raw("Bearer x"), None, 401),
        ("get", "/v1/users/{user}/presence", "", Auth::ApiKey, None, 400),
    ];
    for (method, template, query, auth, body, expected) in refusals {
        let params: &[&str] = if template.contains("{user}") { &["bad\u{1}user"] } else { &[] };
        let (status, answer) = c.call(method, template, params, query, auth, &[], body.as_ref()).await;
        assert_eq!(status, expected, "{method} {template}?{query}: {answer}");
    }
    // A body over 1 MiB, one that is not JSON.
    let response = server
        .http
        .post(format!("{}/v1/notify", server.url))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(vec![b' '; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", "/v1/notify", response).await.0, 413);
    let response = server
        .http
        .post(format!("{}/v1/notify", server.url))
        .bearer_auth(API_KEY)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(c.check("post", "/v1/notify", response).await.0, 415);
    // The cookie from another site.
    let cookie = format!("herald_token={alice}");
    let headers = [("cookie", cookie.as_str()), ("origin", "https://evil.example")];
    assert_eq!(c.call("get", "/v1/inbox", &[], "", Auth::None, &headers, None).await.0, 403);
    // Stream refusals, on both paths.
    for path in STREAM_PATHS {
        let response = server.stream_request_via(path, Some(&alice), "last_event_id=x", None).await;
        let status = response.status;
        let body = response.json().await;
        spec().assert_answer("get", "/v1/stream", status, Some("application/json"), &body);
        assert_eq!(status, 400);
    }
    let response = server.http.get(format!("{}/v1/ws?token={alice}", server.url)).send().await.unwrap();
    assert_eq!(c.check("get", "/v1/ws", response).await.0, 400, "not a handshake");

    // A resume from another epoch, and a topic position beyond its log: `reset`, `topic_reset`.
    let mut resumed =
        server.sse(&alice, &format!("last_event_id={seq};room:1=999&epoch=other&topics=room:1")).await;
    let names: Vec<Value> =
        [next_sse(&mut resumed).await, next_sse(&mut resumed).await, next_sse(&mut resumed).await]
            .iter()
            .map(|e| e["event"].clone())
            .collect();
    assert!(names.contains(&json!("reset")) && names.contains(&json!("topic_reset")), "{names:?}");

    // Sign-out: every transport's `closed`, then the token is refused.
    let (status, closed) =
        c.api("delete", "/v1/users/{user}/sessions/{session}", &["alice", "laptop"], None).await;
    assert_eq!((status, closed["closed"].as_u64().map(|n| n >= 3)), (200, Some(true)), "{closed}");
    loop {
        let event = next_sse(&mut sse).await;
        if event["event"] == "closed" {
            assert_eq!(event["data"]["reason"], "session_closed");
            break;
        }
    }
    loop {
        let frame = next_ws(&mut ws).await;
        if frame["event"] == "closed" {
            break;
        }
    }
    let (status, answer) = c.call("get", "/v1/inbox/counts", &[], "", Auth::Token(&alice), &[], None).await;
    assert_eq!((status, code(&answer)), (401, "token_revoked"));
    assert_eq!(c.api("delete", "/v1/users/{user}/sessions", &["bob"], None).await.0, 200);

    // No route, no method: the router's fallbacks are errors too.
    for (method, path, status) in [("get", "/v1/nope", 404), ("put", "/v1/notify", 405)] {
        let response = server
            .http
            .request(method.to_uppercase().parse().unwrap(), format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        spec().assert_component("Error", &response.json().await.unwrap());
    }

    // Every described operation answered a success in this scenario (the demo's are probed
    // by `every_description_is_served_and_nothing_else_on_its_paths`).
    let seen = c.seen.lock().unwrap().clone();
    for (method, path) in spec().operations() {
        if spec().operation(&method, &path).unwrap().get("x-herald-dev-only").is_some() {
            continue;
        }
        assert!(
            seen.iter().any(|(m, p, status)| (m, p) == (&method, &path) && *status < 400),
            "{method} {path} was never answered with a success in the scenario"
        );
    }
    let statuses: BTreeSet<u16> = seen.iter().map(|(_, _, status)| *status).collect();
    for status in [200, 202, 304, 400, 401, 403, 404, 409, 413, 415] {
        assert!(statuses.contains(&status), "no {status} answer was checked: {statuses:?}");
    }
    drop(ws.close(None).await);
    server.shutdown().await;
}

/// The next text frame of a WebSocket, as JSON, checked against `WsMessage`.
async fn next_ws(ws: &mut crate::websocket::Ws) -> Value {
    loop {
        let message =
            tokio::time::timeout(EVENT_WAIT, ws.next()).await.expect("no frame").expect("ended").unwrap();
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                spec().assert_component("WsMessage", &frame);
                return frame;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The per-address caps' refusals: 429 with `Retry-After`, as described.
#[tokio::test]
async fn refusals_of_the_caps_match_the_description() {
    let caps =
        herald_server::caps::Caps { ip_requests_per_sec: 1, ip_requests_burst: 1, ..Default::default() };
    let server = TestServer::with_settings(ServerSettings { caps, ..ServerSettings::default() }).await;
    let c = Checked::new(&server);
    let token = server.token("carol", None);
    let mut statuses = BTreeMap::new();
    for _ in 0..2 {
        let (status, _) = c.call("get", "/v1/inbox/counts", &[], "", Auth::Token(&token), &[], None).await;
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&429), Some(&1), "{statuses:?}");
    server.shutdown().await;
}
