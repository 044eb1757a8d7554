//! The policies evaluated together by parameter group (one generated rule
//! per group) must decide exactly as one `eval_rule` per policy did: the
//! same findings, in the same order, with the same enforcement and message.
//! Thousands of generated Pods and Deployments, in namespaces at each Pod
//! Security level, through both paths of the same bundled set.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tollgate_webhook::config::{Config, Enforcement};
use tollgate_webhook::pod_security::{NamespacePolicy, PodSecurityDefaults};
use tollgate_webhook::policy::gatekeeper::matching::NoNamespaces;
use tollgate_webhook::policy::{PolicySet, bundled_sources};
use tollgate_webhook::review::Request;

/// A small deterministic generator (xorshift64*), so that a failure names a
/// case that reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn security_context(rng: &mut Rng) -> Value {
    let mut sc = serde_json::Map::new();
    if rng.chance(30) {
        sc.insert("privileged".into(), json!(rng.chance(50)));
    }
    if rng.chance(40) {
        sc.insert("allowPrivilegeEscalation".into(), json!(rng.chance(50)));
    }
    if rng.chance(40) {
        sc.insert("runAsNonRoot".into(), json!(rng.chance(70)));
    }
    if rng.chance(30) {
        sc.insert("runAsUser".into(), json!(*rng.pick(&[0, 1000, 65534])));
    }
    if rng.chance(40) {
        let drop = if rng.chance(70) {
            json!(["ALL"])
        } else {
            json!([])
        };
        let adds = [
            json!([]),
            json!(["NET_BIND_SERVICE"]),
            json!(["SYS_ADMIN"]),
            json!(["CHOWN", "KILL"]),
        ];
        let add = rng.pick(&adds).clone();
        sc.insert("capabilities".into(), json!({"drop": drop, "add": add}));
    }
    if rng.chance(30) {
        let t = *rng.pick(&["RuntimeDefault", "Localhost", "Unconfined"]);
        let mut profile = json!({"type": t});
        if t == "Localhost" {
            profile["localhostProfile"] = json!("profiles/audit.json");
        }
        sc.insert("seccompProfile".into(), profile);
    }
    if rng.chance(10) {
        sc.insert(
            "procMount".into(),
            json!(*rng.pick(&["Default", "Unmasked"])),
        );
    }
    if rng.chance(10) {
        sc.insert(
            "seLinuxOptions".into(),
            json!({"type": *rng.pick(&["container_t", "spc_t"]), "user": "system_u"}),
        );
    }
    if rng.chance(5) {
        sc.insert(
            "appArmorProfile".into(),
            json!({"type": *rng.pick(&["RuntimeDefault", "Unconfined"])}),
        );
    }
    Value::Object(sc)
}

fn container(rng: &mut Rng, name: &str) -> Value {
    let image = *rng.pick(&[
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/pause:latest",
        "docker.io/library/nginx",
        "ghcr.io/acme/tool@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ]);
    let mut c = json!({"name": name, "image": image});
    if rng.chance(90) {
        c["resources"] = json!({
            "limits": {"cpu": "500m", "memory": *rng.pick(&["256Mi", "64Gi"])},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        });
        if rng.chance(15) {
            c["resources"]["limits"]["nvidia.com/gpu"] = json!(*rng.pick(&["1", "8"]));
        }
    }
    if rng.chance(60) {
        c["securityContext"] = security_context(rng);
    }
    if rng.chance(15) {
        c["ports"] = json!([{"containerPort": 8080, "hostPort": *rng.pick(&[0, 8080])}]);
    }
    if rng.chance(10) {
        c["livenessProbe"] =
            json!({"httpGet": {"port": 8080, "host": *rng.pick(&["", "10.0.0.1"])}});
    }
    c
}

fn pod_spec(rng: &mut Rng) -> Value {
    let containers: Vec<Value> = (0..1 + rng.below(3))
        .map(|i| container(rng, &format!("c{i}")))
        .collect();
    let mut spec = json!({"containers": containers});
    if rng.chance(25) {
        spec["initContainers"] = json!([container(rng, "init")]);
    }
    if rng.chance(50) {
        spec["securityContext"] = security_context(rng);
    }
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if rng.chance(8) {
            spec[field] = json!(true);
        }
    }
    if rng.chance(30) {
        let volumes = [
            json!({"name": "data", "emptyDir": {}}),
            json!({"name": "host", "hostPath": {"path": "/var/run"}}),
            json!({"name": "cfg", "configMap": {"name": "cfg"}}),
            json!({"name": "nfs", "nfs": {"server": "nfs", "path": "/"}}),
        ];
        spec["volumes"] = json!([rng.pick(&volumes).clone()]);
    }
    if rng.chance(5) {
        spec["securityContext"]["sysctls"] = json!([{"name": *rng.pick(&["net.ipv4.ping_group_range", "kernel.msgmax"]), "value": "1"}]);
    }
    if rng.chance(5) {
        spec["hostUsers"] = json!(false);
    }
    if rng.chance(3) {
        spec["os"] = json!({"name": "windows"});
    }
    spec
}

fn object(rng: &mut Rng, n: usize, namespace: &str) -> Value {
    let mut labels = serde_json::Map::new();
    if rng.chance(80) {
        labels.insert("team".into(), json!(*rng.pick(&["ml", "data"])));
    }
    let metadata = json!({"name": format!("w{n}"), "namespace": namespace, "labels": labels});
    if rng.chance(50) {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec(rng)})
    } else {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "w"}},
                "template": {"metadata": {"labels": {"app": "w"}}, "spec": pod_spec(rng)},
            },
        })
    }
}

fn review(object: &Value) -> Vec<u8> {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", "v1"),
    };
    let kind = object["kind"].as_str().unwrap();
    let resource = if kind == "Pod" { "pods" } else { "deployments" };
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "namespace": object["metadata"]["namespace"],
            "name": object["metadata"]["name"],
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": object,
        },
    }))
    .unwrap()
}

#[test]
fn grouped_evaluation_decides_as_one_rule_per_policy() {
    let config = Config::default();
    let compile = || PolicySet::compile(&bundled_sources(), &config.policies, "bundled").unwrap();
    let grouped = compile();
    let ungrouped = compile().ungrouped();
    let levels = ["privileged", "baseline", "restricted"];
    let mut rng = Rng(0x7011_6a7e);
    let mut denied = 0;
    const CASES: usize = 2000;
    for n in 0..CASES {
        let level = levels[n % levels.len()];
        let namespace = format!("app-{level}");
        let object = object(&mut rng, n, &namespace);
        let request = Request::decode(&review(&object)).unwrap();
        let mut labels = BTreeMap::from([(
            "pod-security.kubernetes.io/enforce".to_owned(),
            level.to_owned(),
        )]);
        if n % 7 == 0 {
            labels.insert(
                "pod-security.kubernetes.io/warn".to_owned(),
                "restricted".to_owned(),
            );
            labels.insert(
                "pod-security.kubernetes.io/enforce-version".to_owned(),
                "v1.24".to_owned(),
            );
        }
        let ns = NamespacePolicy::resolve(Some(&labels), &PodSecurityDefaults::default())
            .input(&request.namespace, Some(&labels));
        let a = grouped.evaluate_in_namespace(&request.document, &request.kind, &NoNamespaces, &ns);
        let b =
            ungrouped.evaluate_in_namespace(&request.document, &request.kind, &NoNamespaces, &ns);
        assert_eq!(
            a.findings, b.findings,
            "case {n} ({level}): grouped and per-policy evaluation differ on\n{object:#}"
        );
        assert_eq!(
            a.evaluated, b.evaluated,
            "case {n}: evaluated counts differ"
        );
        if a.findings
            .iter()
            .any(|f| f.enforcement == Enforcement::Deny)
        {
            denied += 1;
        }
    }
    // The generator must exercise both verdicts, or the comparison is empty.
    assert!(
        denied > CASES / 20 && denied < CASES * 19 / 20,
        "{denied} of {CASES} cases were denied"
    );
}
