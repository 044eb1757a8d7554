//! An arbitrary request body through the webhook's whole admission path,
//! as `POST /validate` and `POST /mutate` run it: `Request::decode`, then
//! `Admission::decide` with the bundled policies and the default config.
//!
//! Invariants (each panic names the one that broke):
//! - decoding and deciding never panic; a refused body has an error text;
//! - every answer echoes `request.uid`; a denial carries a code and a
//!   message; `Response::encode` is an AdmissionReview that round-trips;
//! - a validation answer is the same when the same review is decided again
//!   (no state leaks between requests on one thread's reused engines);
//! - a mutation patch applies to the request's object, and the mutated
//!   object, sent again as a review, gets no patch.
#![no_main]

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tollgate_webhook::admission::{Admission, Endpoint};
use tollgate_webhook::config::Config;
use tollgate_webhook::metrics::Metrics;
use tollgate_webhook::review::{Request, Response};
use tollgate_webhook::serve::load_policies;
use tollgate_webhook::teams::Labels;

fn admission() -> &'static Admission {
    static ADMISSION: OnceLock<Admission> = OnceLock::new();
    ADMISSION.get_or_init(|| {
        let mut config = Config::default();
        config.teams.admin_groups.push("platform-admins".into());
        config
            .teams
            .flyte
            .projects
            .insert("flytesnacks".into(), "ml".into());
        let policies = load_policies(&config).expect("compiling the bundled policies");
        Admission::new(policies, &config, Arc::new(Metrics::new())).expect("building Admission")
    })
}

/// The namespace's labels, as the server's namespace cache would give
/// them: none (unknown namespace), or a team label.
fn labels_for(data: &[u8]) -> Option<Labels> {
    (data.len() % 2 == 1).then(|| Labels::from([("team".to_owned(), "data".to_owned())]))
}

fn check_response(what: &str, request: &Request, response: &Response) {
    assert_eq!(
        response.uid, request.uid,
        "{what}: the answer's uid is not the request's"
    );
    if response.allowed {
        assert!(
            response.code.is_none() && response.message.is_none(),
            "{what}: an admission carries a denial's code or message: {response:?}"
        );
    } else {
        assert!(
            response.code.is_some(),
            "{what}: a denial without a code: {response:?}"
        );
        assert!(
            response.message.as_deref().is_some_and(|m| !m.is_empty()),
            "{what}: a denial without a message: {response:?}"
        );
        assert!(
            response.patch.is_none(),
            "{what}: a denial with a patch: {response:?}"
        );
    }
    let encoded: Value = serde_json::from_slice(&response.encode())
        .unwrap_or_else(|e| panic!("{what}: Response::encode is not JSON: {e}"));
    assert_eq!(
        encoded["apiVersion"], "admission.k8s.io/v1",
        "{what}: encoded apiVersion"
    );
    assert_eq!(encoded["kind"], "AdmissionReview", "{what}: encoded kind");
    let out = &encoded["response"];
    assert_eq!(out["uid"], request.uid.as_str(), "{what}: encoded uid");
    assert_eq!(out["allowed"], response.allowed, "{what}: encoded allowed");
    match &response.patch {
        Some(patch) => {
            assert_eq!(out["patchType"], "JSONPatch", "{what}: encoded patchType");
            let sent = base64::engine::general_purpose::STANDARD
                .decode(out["patch"].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{what}: encoded patch is not base64: {e}"));
            assert_eq!(&sent, patch, "{what}: the encoded patch is not the patch");
        }
        None => assert!(
            out.get("patch").is_none() && out.get("patchType").is_none(),
            "{what}: a patch was encoded for an answer without one"
        ),
    }
    if let Some(message) = &response.message {
        assert_eq!(
            out["status"]["message"],
            message.as_str(),
            "{what}: encoded message"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let admission = admission();
    let request = match Request::decode(data) {
        Ok(r) => r,
        Err(e) => {
            assert!(
                !e.to_string().is_empty(),
                "a decode error without text: {e:?}"
            );
            return;
        }
    };
    let labels = labels_for(data);

    // Validation, twice: the second answer must be the first.
    let first = admission.decide(Endpoint::Validate, &request, labels.as_ref());
    check_response("validate", &request, &first);
    let again = admission.decide(Endpoint::Validate, &request, labels.as_ref());
    let timed_out = |r: &Response| r.message.as_deref().is_some_and(|m| m.contains("time"));
    if !timed_out(&first) && !timed_out(&again) {
        assert_eq!(
            first, again,
            "the same review decided twice got two answers (state leaked between requests)"
        );
    }

    // Mutation: the patch applies, and the mutated object needs no more.
    let mutated = admission.decide(Endpoint::Mutate, &request, labels.as_ref());
    check_response("mutate", &request, &mutated);
    let Some(patch) = &mutated.patch else {
        return;
    };
    let patch: json_patch::Patch = serde_json::from_slice(patch)
        .unwrap_or_else(|e| panic!("the mutation's patch is not a JSON Patch: {e}"));
    let mut document = serde_json::to_value(&request.document)
        .unwrap_or_else(|e| panic!("the request document does not serialize: {e}"));
    let object = document
        .get_mut("object")
        .unwrap_or_else(|| panic!("a patch for a request without an object"));
    json_patch::patch(object, &patch)
        .unwrap_or_else(|e| panic!("the mutation's patch does not apply to the object: {e}"));
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": document,
    });
    let body = serde_json::to_vec(&review).expect("serializing a JSON value");
    let again = Request::decode(&body)
        .unwrap_or_else(|e| panic!("the mutated review does not decode: {e}"));
    let second = admission.decide(Endpoint::Mutate, &again, labels.as_ref());
    assert!(
        second.allowed && second.patch.is_none(),
        "mutating the mutated object again changed it (or refused it): {:?}",
        second
            .patch
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .or(second.message)
    );
});
