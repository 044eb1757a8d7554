//! `tollgate review`: offline admission of manifests, through the same
//! configuration and policies as the webhook — what a team runs in CI
//! before ArgoCD syncs (`kustomize build | tollgate review -f -`).
//!
//! Each object is reviewed as a CREATE. Namespace labels (for
//! `namespaceSelector`s) come from Namespace objects in the input and from
//! `--namespaces`. Output is sorted by kind, namespace and name so that it
//! can be diffed.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::admission::{Admission, Endpoint};
use crate::cli::exit;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::mutate::Outcome as MutateOutcome;
use crate::policy::gatekeeper::inventory::Inventory;
use crate::policy::gatekeeper::matching::NamespaceLabels as _;
use crate::policy::gatekeeper::yaml_documents;
use crate::review::{Request, Response, create_request_for};
use crate::walk::has_extension;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifests: files, directories (searched recursively for YAML and
    /// JSON) or `-` for standard input. Multi-document YAML is fine.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The webhook's configuration (policies, overrides, exemptions).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// YAML file(s) of Namespace objects, for namespace labels.
    #[arg(long)]
    pub namespaces: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "pretty")]
    pub format: Format,
}

pub(crate) fn read_objects(paths: &[PathBuf]) -> Result<Vec<serde_json::Value>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path == Path::new("-") {
            files.push(path.clone());
        } else {
            let wanted = |p: &Path| has_extension(p, &["yaml", "yml", "json"]);
            files.extend(
                crate::walk::files(path, &wanted)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            );
        }
    }
    let mut objects = Vec::new();
    for file in files {
        let (text, origin) = if file == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("reading standard input: {e}"))?;
            (text, "<stdin>".to_owned())
        } else {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            (text, file.display().to_string())
        };
        for doc in yaml_documents(&text, &origin).map_err(|e| e.to_string())? {
            // A `kind: List` (kubectl get -o yaml) holds its objects in items.
            match doc.get("kind").and_then(|k| k.as_str()) {
                Some("List") => objects.extend(
                    doc.get("items")
                        .and_then(|i| i.as_array())
                        .cloned()
                        .unwrap_or_default(),
                ),
                _ => objects.push(doc),
            }
        }
    }
    Ok(objects)
}

/// One object's verdict.
struct Verdict {
    kind: String,
    namespace: String,
    name: String,
    /// The mutation, one line per JSON Patch operation.
    patch: Vec<String>,
    response: Response,
}

fn request_for(object: &serde_json::Value) -> Result<Request, String> {
    let review = json!({
        "apiVersion": crate::review::API_VERSION,
        "kind": crate::review::KIND,
        "request": create_request_for(object),
    });
    Request::decode(review.to_string().as_bytes()).map_err(|e| e.to_string())
}

/// `add /metadata/labels/team = "ml"`, one line per operation.
fn describe(patch: &json_patch::Patch) -> Vec<String> {
    let ops = serde_json::to_value(patch).unwrap_or_default();
    ops.as_array()
        .into_iter()
        .flatten()
        .map(|op| {
            let verb = op["op"].as_str().unwrap_or("");
            let path = op["path"].as_str().unwrap_or("");
            match op.get("value") {
                Some(value) => format!("{verb} {path} = {value}"),
                None => format!("{verb} {path}"),
            }
        })
        .collect()
}

pub fn run(args: Args) -> u8 {
    match review(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate review: {e}");
            exit::BROKEN
        }
    }
}

fn review(args: &Args) -> Result<u8, String> {
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let policies = crate::serve::load_policies(&config).map_err(|e| format!("{e:#}"))?;
    let objects = read_objects(&args.files)?;
    let mut namespaces = Inventory::default();
    for object in read_objects(&args.namespaces)?
        .into_iter()
        .chain(objects.iter().cloned())
    {
        if object.get("kind").and_then(|k| k.as_str()) == Some("Namespace") {
            namespaces.add(object);
        }
    }
    let admission =
        Admission::new(policies, &config, Arc::new(Metrics::new())).map_err(|e| e.to_string())?;
    let mut verdicts = Vec::new();
    for object in &objects {
        let request = request_for(object)?;
        let labels = namespaces.labels(&request.namespace);
        // As the apiserver does: mutate, then validate what was mutated.
        let mutation = admission.mutate(&request, labels.as_ref());
        let (object, patch) = match &mutation {
            MutateOutcome::Patch { patch, mutated } => (mutated.clone(), describe(patch)),
            _ => (object.clone(), Vec::new()),
        };
        let response = match mutation {
            MutateOutcome::Denied { .. } => {
                admission.decide(Endpoint::Mutate, &request, labels.as_ref())
            }
            _ => admission.decide(Endpoint::Validate, &request_for(&object)?, labels.as_ref()),
        };
        verdicts.push(Verdict {
            kind: request.kind,
            namespace: request.namespace,
            name: request.name,
            patch,
            response,
        });
    }
    verdicts
        .sort_by(|a, b| (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name)));
    let denied = verdicts.iter().filter(|v| !v.response.allowed).count();
    match args.format {
        Format::Pretty => print!("{}", pretty(&verdicts)),
        Format::Json => println!("{}", json(&verdicts)),
    }
    Ok(if denied > 0 { exit::FAILED } else { exit::OK })
}

fn object_name(v: &Verdict) -> String {
    if v.namespace.is_empty() {
        format!("{} {}", v.kind, v.name)
    } else {
        format!("{} {}/{}", v.kind, v.namespace, v.name)
    }
}

fn denials(v: &Verdict) -> Vec<&str> {
    v.response
        .message
        .as_deref()
        .map(|m| m.lines().collect())
        .unwrap_or_default()
}

fn pretty(verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    for v in verdicts {
        let verdict = if v.response.allowed {
            "allowed"
        } else {
            "denied"
        };
        out.push_str(&format!("{}: {verdict}\n", object_name(v)));
        if v.patch.is_empty() {
            out.push_str("  mutations: none\n");
        }
        for line in &v.patch {
            out.push_str(&format!("  mutate  {line}\n"));
        }
        for line in denials(v) {
            out.push_str(&format!("  deny    {line}\n"));
        }
        for line in &v.response.warnings {
            out.push_str(&format!("  warn    {line}\n"));
        }
    }
    let denied = verdicts.iter().filter(|v| !v.response.allowed).count();
    let warned = verdicts
        .iter()
        .filter(|v| !v.response.warnings.is_empty())
        .count();
    out.push_str(&format!(
        "{} objects: {} allowed, {denied} denied, {warned} with warnings\n",
        verdicts.len(),
        verdicts.len() - denied
    ));
    out
}

fn json(verdicts: &[Verdict]) -> String {
    let objects: Vec<_> = verdicts
        .iter()
        .map(|v| {
            json!({
                "kind": v.kind,
                "namespace": v.namespace,
                "name": v.name,
                "allowed": v.response.allowed,
                "denials": denials(v),
                "warnings": v.response.warnings,
                "patch": v.patch,
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({ "objects": objects })).unwrap_or_default()
}
