use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tower::{Layer, Service};

use super::*;
use crate::config::{Config, ConfigError};
use crate::errors::{REASON_HEADER, error_response};
use crate::jwt::Verified;
use crate::listener::ConnInfo;
use crate::route::RouteTable;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn config(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut c = Config::parse(yaml, "proxy.yaml")?;
    c.apply_env(env_of(env))?;
    Ok(c)
}

fn error(yaml: &str, env: &[(&str, &str)]) -> String {
    config(yaml, env).unwrap_err().to_string()
}

fn input<'a>(
    method: &'a Method,
    path: &'a str,
    peer: Option<&'a str>,
    claims: Option<&'a serde_json::Map<String, Value>>,
) -> Input<'a> {
    Input {
        method,
        path,
        peer,
        claims,
    }
}

fn claims(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn rules(yaml: &str, env: &[(&str, &str)]) -> Arc<Authorization> {
    let c = config(yaml, env).unwrap();
    let table = c.route_table().unwrap();
    table.routes()[0].authorization.clone().unwrap()
}

#[test]
fn operators_on_claims() {
    let a = rules(
        "routes:\n- pathPrefix: /\n  authorization:\n    rules:\n\
         \x20   - {name: eq, when: [{claim: email, equals: a@x.io}]}\n\
         \x20   - {name: in, when: [{claim: tier, in: [gold, 3]}]}\n\
         \x20   - {name: arr, when: [{claim: groups, contains: ml}]}\n\
         \x20   - {name: scope, when: [{claim: scope, contains: 'ws:open'}]}\n\
         \x20   - {name: pre, when: [{claim: sub, prefix: 'svc-'}]}\n\
         \x20   - {name: nested, when: [{claim: realm_access.roles, contains: admin}]}\n\
         \x20   - {name: dotted, when: [{claim: ['https://x.io/team'], equals: a}]}\n\
         \x20   - {name: env, when: [{claim: preferred_username, equals: {env: OWNER}}]}\n\
         \x20   - {name: field, when: [{claim: ns, equals: {podField: metadata.namespace}}]}\n\
         \x20   - {name: present, when: [{claim: act, present: true}]}\n",
        &[("OWNER", "ml-user-1"), ("POD_NAMESPACE", "team-a")],
    );
    let get = Method::GET;
    let who = |v: Value| {
        let c = claims(v);
        match a.decide(&input(&get, "/", None, Some(&c))) {
            Decision::Allowed(i) => a.allow[i].name.to_string(),
            other => format!("{other:?}"),
        }
    };
    assert_eq!(who(json!({"email": "a@x.io"})), "eq");
    assert_eq!(who(json!({"email": "A@x.io"})), "NotAllowed");
    assert_eq!(who(json!({"tier": 3})), "in");
    assert_eq!(who(json!({"tier": "3"})), "NotAllowed");
    assert_eq!(who(json!({"groups": ["a", "ml"]})), "arr");
    assert_eq!(who(json!({"groups": ["mlx"]})), "NotAllowed");
    assert_eq!(who(json!({"groups": {"ml": true}})), "NotAllowed");
    assert_eq!(who(json!({"scope": "openid ws:open"})), "scope");
    assert_eq!(who(json!({"scope": "openid ws:opener"})), "NotAllowed");
    assert_eq!(who(json!({"sub": "svc-flyte"})), "pre");
    assert_eq!(who(json!({"sub": 7})), "NotAllowed");
    assert_eq!(who(json!({"realm_access": {"roles": ["admin"]}})), "nested");
    assert_eq!(who(json!({"https://x.io/team": "a"})), "dotted");
    assert_eq!(who(json!({"preferred_username": "ml-user-1"})), "env");
    assert_eq!(
        who(json!({"preferred_username": "ml-user-2"})),
        "NotAllowed"
    );
    assert_eq!(who(json!({"ns": "team-a"})), "field");
    assert_eq!(who(json!({"act": {"sub": "x"}})), "present");
    assert_eq!(who(json!({"act": null})), "NotAllowed");
    // No token at all: no claim condition holds.
    assert_eq!(
        a.decide(&input(&get, "/", None, None)),
        Decision::NotAllowed
    );
}

#[test]
fn deny_before_allow_and_peer_method_path() {
    let a = rules(
        "routes:\n- pathPrefix: /\n  authorization:\n    rules:\n\
         \x20   - {name: members, when: [{claim: groups, contains: team-a}]}\n\
         \x20   - {name: no-deletes, action: deny, when: [{method: [DELETE]}, {path: {prefix: /api}}]}\n\
         \x20   - {name: flyte, when: [{peer: ['spiffe://cluster.local/ns/flyte/sa/*']}, {path: {exact: /api/run}}]}\n",
        &[],
    );
    let member = claims(json!({"groups": ["team-a"]}));
    let (get, delete) = (Method::GET, Method::DELETE);
    assert_eq!(
        a.decide(&input(&get, "/api/x", None, Some(&member))),
        Decision::Allowed(0)
    );
    // DENY first, even for a member.
    assert_eq!(
        a.decide(&input(&delete, "/api/x", None, Some(&member))),
        Decision::Denied(0)
    );
    // Every condition of a rule must hold: DELETE elsewhere is not denied.
    assert_eq!(
        a.decide(&input(&delete, "/apix", None, Some(&member))),
        Decision::Allowed(0)
    );
    let flyte = Some("spiffe://cluster.local/ns/flyte/sa/propeller");
    assert_eq!(
        a.decide(&input(&get, "/api/run", flyte, None)),
        Decision::Allowed(1)
    );
    assert_eq!(
        a.decide(&input(&get, "/api/run/x", flyte, None)),
        Decision::NotAllowed
    );
    assert_eq!(
        a.decide(&input(
            &get,
            "/api/run",
            Some("spiffe://cluster.local/ns/web/sa/x"),
            None
        )),
        Decision::NotAllowed
    );
}

#[test]
fn the_workspace_profile() {
    let yaml = "routes:\n- pathPrefix: /\n  authorization:\n    workspace: {ownerClaim: email, adminGroups: [platform-admins]}\n";
    let owner_env = [
        ("TOLLGATE_WORKSPACE_OWNER", "ml-user-1@corp.io"),
        ("TOLLGATE_TEAM", "team-a"),
    ];
    let private = rules(yaml, &owner_env);
    let mut shared_env = owner_env.to_vec();
    shared_env.push(("TOLLGATE_WORKSPACE_SHARING", "team"));
    let shared = rules(yaml, &shared_env);
    let get = Method::GET;
    let verdict = |a: &Authorization, v: Value| {
        let c = claims(v);
        match a.decide(&input(&get, "/lab", None, Some(&c))) {
            Decision::Allowed(i) => a.allow[i].name.to_string(),
            other => format!("{other:?}"),
        }
    };
    let owner = json!({"email": "ml-user-1@corp.io", "groups": []});
    let admin = json!({"email": "ops@corp.io", "groups": ["platform-admins"]});
    let teammate = json!({"email": "ml-user-2@corp.io", "groups": ["team-a"]});
    let stranger = json!({"email": "ml-user-3@corp.io", "groups": ["team-b"]});
    assert_eq!(verdict(&private, owner.clone()), "owner");
    assert_eq!(verdict(&private, admin.clone()), "admin");
    assert_eq!(verdict(&private, teammate.clone()), "NotAllowed");
    assert_eq!(verdict(&private, stranger.clone()), "NotAllowed");
    assert_eq!(verdict(&shared, teammate), "team");
    assert_eq!(verdict(&shared, stranger), "NotAllowed");
    assert_eq!(verdict(&shared, owner), "owner");
    // Another user's token naming the owner elsewhere gets nothing.
    assert_eq!(
        verdict(&private, json!({"sub": "ml-user-1@corp.io"})),
        "NotAllowed"
    );
    // No owner in the environment: the proxy does not start.
    let e = error(yaml, &[]);
    assert_eq!(
        e,
        "routes[0].authorization.workspace: reads $TOLLGATE_WORKSPACE_OWNER, which is unset or empty; the injector sets it for workspace pods (docs/sidecar.md)"
    );
    let e = error(
        yaml,
        &[
            ("TOLLGATE_WORKSPACE_OWNER", "a"),
            ("TOLLGATE_WORKSPACE_SHARING", "team"),
        ],
    );
    assert!(e.contains("$TOLLGATE_TEAM"), "{e}");
    let e = error(
        yaml,
        &[
            ("TOLLGATE_WORKSPACE_OWNER", "a"),
            ("TOLLGATE_WORKSPACE_SHARING", "everyone"),
        ],
    );
    assert!(e.contains("\"everyone\""), "{e}");
}

#[test]
fn config_errors_name_their_path() {
    let route = |authz: &str| format!("routes:\n- pathPrefix: /\n  authorization: {authz}\n");
    for (authz, path, message) in [
        (
            "{rules: [{when: [{claim: email, matches: x}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0].matches: unknown field `matches`",
            "expected one of",
        ),
        (
            "{rules: [{action: allow}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when: an empty rule",
            "at least one condition",
        ),
        (
            "{rules: [{when: []}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when: an empty rule",
            "",
        ),
        (
            "{rules: [{when: [{}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0]: an empty condition",
            "",
        ),
        (
            "{rules: [{when: [{claim: 'a..b', equals: x}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0].claim: \"a..b\" is not a claim path",
            "",
        ),
        (
            "{rules: [{when: [{claim: '', equals: x}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0].claim: \"\" is not a claim path",
            "",
        ),
        (
            "{rules: [{when: [{claim: email}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0]: claim",
            "has no operator",
        ),
        (
            "{rules: [{when: [{claim: email, equals: a, prefix: b}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0]: one operator per condition",
            "",
        ),
        (
            "{rules: [{when: [{equals: a}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0]: equals needs a claim",
            "",
        ),
        (
            "{rules: [{when: [{claim: a, equals: {podField: status.podIP}}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0].equals: podField: \"status.podIP\"",
            "",
        ),
        (
            "{rules: [{when: [{claim: a, equals: [1]}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0].equals: must be a string",
            "",
        ),
        (
            "{rules: [{when: [{method: [get]}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0].method[0]: \"get\" is not an HTTP method",
            "",
        ),
        (
            "{rules: [{when: [{peer: ['x/y']}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0].peer[0]: SPIFFE ID pattern",
            "",
        ),
        (
            "{rules: [{when: [{path: {prefix: /a/../b}}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0].path.prefix: \"/a/../b\" is not a normalised path",
            "",
        ),
        (
            "{rules: [{when: [{method: [GET], path: {exact: /}}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].when[0]: one condition tests one thing",
            "",
        ),
        (
            "{rules: [{action: block, when: [{method: [GET]}]}]}",
            "proxy.yaml: routes[0].authorization.rules[0].action: unknown variant `block`",
            "",
        ),
        (
            "{}",
            "proxy.yaml: routes[0].authorization: names no rules",
            "",
        ),
        (
            "{workspace: {ownerClaim: 'email.'}}",
            "proxy.yaml: routes[0].authorization.workspace.ownerClaim: \"email.\" is not a claim path",
            "",
        ),
        (
            "{rules: [{name: x, when: [{method: [GET]}]}, {name: x, when: [{method: [PUT]}]}]}",
            "proxy.yaml: routes[0].authorization.rules[1].name: \"x\" names another rule",
            "",
        ),
    ] {
        let e = error(&route(authz), &[]);
        assert!(e.starts_with(path), "{authz}: {e}");
        assert!(e.contains(message), "{authz}: {e}");
    }
    // A variable a rule reads must be set.
    let e = error(
        &route("{rules: [{when: [{claim: groups, contains: {env: TOLLGATE_TEAM}}]}]}"),
        &[],
    );
    assert!(
        e.starts_with("routes[0].authorization.rules[0].when[0].contains: reads $TOLLGATE_TEAM, which is unset or empty"),
        "{e}"
    );
}

#[test]
fn a_table_built_without_the_environment_refuses_all() {
    let c = Config::parse(
        "routes:\n- pathPrefix: /\n  authorization: {workspace: {}}\n",
        "proxy.yaml",
    )
    .unwrap();
    let table = RouteTable::new(&c.routes);
    let a = table.routes()[0].authorization.clone().unwrap();
    let owner = claims(json!({"preferred_username": "x"}));
    assert_eq!(
        a.decide(&input(&Method::GET, "/", None, Some(&owner))),
        Decision::Denied(0)
    );
}

fn request(path: &str, claims: Option<Value>, grpc: bool) -> Request<()> {
    let mut r = Request::builder().uri(path);
    if grpc {
        r = r.header("content-type", "application/grpc");
    }
    let mut r = r.body(()).unwrap();
    r.extensions_mut().insert(Arc::new(ConnInfo {
        peer: "127.0.0.1:1".parse().unwrap(),
        identity: None,
        facts: Default::default(),
    }));
    if let Some(c) = claims {
        r.extensions_mut().insert(Arc::new(Verified {
            provider: "p".into(),
            claims: c.as_object().unwrap().clone(),
            expires: u64::MAX,
        }));
    }
    r
}

#[test]
fn the_layer_refuses_with_403_counts_and_never_echoes_claims() {
    let c = config(
        "routes:\n- name: ws\n  pathPrefix: /\n  authorization:\n    workspace: {adminGroups: [ops]}\n    rules:\n\
         \x20   - {name: no-terminals, action: deny, when: [{path: {prefix: /terminals}}]}\n\
         \x20   - {name: watch-api, action: audit, when: [{path: {prefix: /api}}]}\n",
        &[("TOLLGATE_WORKSPACE_OWNER", "ml-user-1")],
    )
    .unwrap();
    let table = c.route_table().unwrap();
    let mut registry = prometheus_client::registry::Registry::with_prefix("tollgate");
    let metrics = AuthzMetrics::register(&mut registry);
    let layer = AuthzLayer::new(&table, &metrics);
    let inner = tower::service_fn(|_r: Request<()>| {
        std::future::ready(Ok::<_, crate::errors::ProxyError>(StatusCode::OK))
    });
    let mut route_svc = crate::route::RouteLayer::new(table).layer(layer.layer(inner));
    use futures_util::FutureExt;
    let mut call = |r: Request<()>| route_svc.call(r).now_or_never().unwrap();
    let owner = json!({"preferred_username": "ml-user-1"});
    let other = json!({"preferred_username": "secret-name-ml-user-2"});
    assert_eq!(
        call(request("/api/x", Some(owner.clone()), false)).unwrap(),
        StatusCode::OK
    );
    assert_eq!(
        call(request("/lab", Some(owner.clone()), false)).unwrap(),
        StatusCode::OK
    );
    let e = call(request("/lab", Some(other.clone()), false)).unwrap_err();
    let response = error_response(&e, false);
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.headers()[REASON_HEADER], "authz-not-allowed");
    assert_eq!(
        e.to_string(),
        "forbidden: no allow rule of route ws matched"
    );
    assert!(!e.to_string().contains("secret-name"));
    let e = call(request("/terminals/1", Some(owner), false)).unwrap_err();
    assert_eq!(
        error_response(&e, false).headers()[REASON_HEADER],
        "authz-denied"
    );
    assert_eq!(e.to_string(), "forbidden: a deny rule of route ws matched");
    let e = call(request("/lab", None, true)).unwrap_err();
    let grpc = error_response(&e, true);
    assert_eq!(grpc.status(), StatusCode::OK);
    assert_eq!(grpc.headers()["grpc-status"], "7");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for want in [
        "tollgate_authz_decisions_total{route=\"ws\",decision=\"allow\",rule=\"owner\"} 2",
        "tollgate_authz_decisions_total{route=\"ws\",decision=\"audit\",rule=\"watch-api\"} 1",
        "tollgate_authz_decisions_total{route=\"ws\",decision=\"deny\",rule=\"no-allow-match\"} 2",
        "tollgate_authz_decisions_total{route=\"ws\",decision=\"deny\",rule=\"no-terminals\"} 1",
        "tollgate_authz_decisions_total{route=\"ws\",decision=\"allow\",rule=\"admin\"} 0",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
}
