//! Per-request cost of the proxy's authorization, in-process, against the
//! same stack without it, in one run: a route with no rules (the
//! baseline), the workspace profile (owner, admin), one rule, and twenty
//! rules where the request is let in by the last (ten deny rules and nine
//! allow rules that each evaluate and miss first). Two measures per row:
//! the route match and authorization layers as tower services (a request
//! built, matched, authorized, answered by a no-op), and the rules'
//! `decide` alone.
//!
//! cargo run --release -p tollgate-benches --bin authz-cost [-- --iterations N]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use serde_json::json;
use tollgate_benches::procfs::self_cpu_seconds;
use tollgate_proxy::authz::{AuthzLayer, AuthzMetrics, Input};
use tollgate_proxy::config::Config;
use tollgate_proxy::errors::ProxyError;
use tollgate_proxy::jwt::Verified;
use tollgate_proxy::listener::ConnInfo;
use tollgate_proxy::route::RouteLayer;
use tower::{Layer, Service};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2_000_000)]
    iterations: u32,
}

/// `count` rules; the request matches only the last (an allow rule).
fn rules(count: usize) -> String {
    let mut out = String::from("    rules:\n");
    for i in 0..count.saturating_sub(1) {
        if i % 2 == 0 {
            out += &format!(
                "    - {{name: deny-{i}, action: deny, when: [{{method: [DELETE]}}, {{claim: email, equals: 'blocked-{i}@corp.io'}}]}}\n"
            );
        } else {
            out += &format!(
                "    - {{name: allow-{i}, when: [{{claim: groups, contains: 'team-{i}'}}, {{path: {{prefix: /lab}}}}]}}\n"
            );
        }
    }
    out + "    - {name: members, when: [{claim: groups, contains: ml}, {claim: email, prefix: 'ml-'}]}\n"
}

fn config(authorization: Option<String>) -> anyhow::Result<Config> {
    let mut yaml = String::from("routes:\n- name: ws\n  pathPrefix: /\n");
    if let Some(a) = authorization {
        yaml += &format!("  authorization:\n{a}");
    }
    let mut c = Config::parse(&yaml, "bench.yaml").map_err(anyhow::Error::msg)?;
    c.apply_env(|name| (name == "TOLLGATE_WORKSPACE_OWNER").then(|| "ml-user-1".to_owned()))
        .map_err(anyhow::Error::msg)?;
    Ok(c)
}

struct Row {
    name: &'static str,
    stack_us: f64,
    stack_cpu_us: f64,
    decide_us: f64,
}

async fn measure(
    name: &'static str,
    c: &Config,
    n: u32,
    verified: &Arc<Verified>,
    conn: &Arc<ConnInfo>,
) -> anyhow::Result<Row> {
    let table = c.route_table().map_err(anyhow::Error::msg)?;
    let authz = AuthzLayer::new(&table, &AuthzMetrics::default());
    let noop = tower::service_fn(|_r: http::Request<()>| async { Ok::<_, ProxyError>(()) });
    let mut svc = RouteLayer::new(table.clone()).layer(authz.layer(noop));
    let request = || {
        let mut r = http::Request::builder()
            .uri("/lab/tree")
            .body(())
            .unwrap_or_default();
        r.extensions_mut().insert(conn.clone());
        r.extensions_mut().insert(verified.clone());
        r
    };
    anyhow::ensure!(
        svc.call(request()).await.is_ok(),
        "{name}: the request is refused"
    );
    let (cpu, t) = (self_cpu_seconds(), Instant::now());
    for _ in 0..n {
        black_box(svc.call(black_box(request())).await.is_ok());
    }
    let stack_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let stack_cpu_us = match (cpu, self_cpu_seconds()) {
        (Some(a), Some(b)) => (b - a) * 1e6 / f64::from(n),
        _ => f64::NAN,
    };
    let method = http::Method::GET;
    let input = Input {
        method: &method,
        path: "/lab/tree",
        peer: None,
        claims: Some(&verified.claims),
    };
    let decide_us = match table.routes()[0].authorization.clone() {
        None => 0.0,
        Some(a) => {
            let t = Instant::now();
            for _ in 0..n {
                black_box(a.decide(black_box(&input)));
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        }
    };
    Ok(Row {
        name,
        stack_us,
        stack_cpu_us,
        decide_us,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.iterations;
    let verified = Arc::new(Verified {
        provider: "corp".into(),
        claims: json!({"iss": "https://issuer.bench", "sub": "0b5e6f2c-ml-user-1",
                       "preferred_username": "ml-user-1", "email": "ml-user-1@corp.io",
                       "groups": ["staff", "gpu-users", "notebooks", "ml", "readers"],
                       "exp": 4_000_000_000u64})
        .as_object()
        .cloned()
        .unwrap_or_default(),
        expires: 4_000_000_000,
    });
    let conn = Arc::new(ConnInfo {
        peer: "127.0.0.1:1000".parse()?,
        identity: Some("spiffe://cluster.local/ns/ingress/sa/gateway".into()),
        facts: Default::default(),
    });
    let cases = [
        ("no authorization (baseline)", None),
        (
            "workspace profile (owner)",
            Some("    workspace: {adminGroups: [platform-admins]}\n".to_owned()),
        ),
        ("1 rule", Some(rules(1))),
        ("20 rules, the last one allows", Some(rules(20))),
    ];
    let mut rows = Vec::new();
    for (name, authz) in cases {
        rows.push(measure(name, &config(authz)?, n, &verified, &conn).await?);
    }
    let base = rows[0].stack_us;
    let base_cpu = rows[0].stack_cpu_us;
    println!("Authorization, µs per request ({n} iterations each, one thread):");
    println!(
        "| route | stack µs | stack CPU µs | − baseline µs | − baseline CPU µs | decide() µs |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.3} | {:.3} | {:+.3} | {:+.3} | {:.3} |",
            r.name,
            r.stack_us,
            r.stack_cpu_us,
            r.stack_us - base,
            r.stack_cpu_us - base_cpu,
            r.decide_us
        );
    }
    Ok(())
}
