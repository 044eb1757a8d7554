//! AdmissionReview `admission.k8s.io/v1`: decoding what the apiserver sends
//! and encoding the answer.
//!
//! The body is parsed exactly once, into a regorus [`Value`] that the
//! policies read as `input.review`; the fields the server itself needs are
//! read from it. Anything not of the v1 shape is a [`ReviewError`], which
//! the server answers with 400 and the cause.

use regorus::Value;
use serde::Serialize;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// The parts of an AdmissionRequest that the server acts on, plus the whole
/// request for the policies.
#[derive(Debug, Clone)]
pub struct Request {
    pub uid: String,
    /// `request.kind.kind`, e.g. `Pod`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub operation: String,
    pub dry_run: bool,
    /// The whole `request` object.
    pub document: Value,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("body is not valid UTF-8 (byte {0})")]
    NotUtf8(usize),
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body is not an AdmissionReview object")]
    NotAnObject,
    #[error("unsupported apiVersion {0:?}: expected \"admission.k8s.io/v1\"")]
    ApiVersion(String),
    #[error("unsupported kind {0:?}: expected \"AdmissionReview\"")]
    Kind(String),
    #[error("AdmissionReview has no \"request\" object")]
    MissingRequest,
    #[error("AdmissionReview request.{field}: {problem}")]
    Field {
        field: &'static str,
        problem: &'static str,
    },
}

impl Request {
    /// Decodes a request body.
    pub fn decode(body: &[u8]) -> Result<Request, ReviewError> {
        let text = std::str::from_utf8(body).map_err(|e| ReviewError::NotUtf8(e.valid_up_to()))?;
        let review = Value::from_json_str(text).map_err(|e| ReviewError::Json(e.to_string()))?;
        if !matches!(review, Value::Object(_)) {
            return Err(ReviewError::NotAnObject);
        }
        match &review["apiVersion"] {
            Value::String(v) if v.as_ref() == API_VERSION => {}
            Value::Undefined => return Err(ReviewError::ApiVersion(String::new())),
            other => return Err(ReviewError::ApiVersion(display(other))),
        }
        match &review["kind"] {
            Value::String(k) if k.as_ref() == KIND => {}
            Value::Undefined => return Err(ReviewError::Kind(String::new())),
            other => return Err(ReviewError::Kind(display(other))),
        }
        let request = &review["request"];
        match request {
            Value::Object(_) => {}
            Value::Undefined | Value::Null => return Err(ReviewError::MissingRequest),
            _ => {
                return Err(ReviewError::Field {
                    field: "(request)",
                    problem: "must be an object",
                });
            }
        }
        let uid = required_string(request, "uid")?;
        if uid.is_empty() {
            return Err(ReviewError::Field {
                field: "uid",
                problem: "must not be empty",
            });
        }
        let kind = match &request["kind"] {
            Value::Object(_) => {
                string_field(&request["kind"], "kind").ok_or(ReviewError::Field {
                    field: "kind.kind",
                    problem: "must be a string",
                })?
            }
            _ => {
                return Err(ReviewError::Field {
                    field: "kind",
                    problem: "must be an object with group, version and kind",
                });
            }
        };
        let operation = required_string(request, "operation")?;
        // The policies and the mutator read these as objects: anything else
        // would be judged as if the object were empty, and admitted.
        for field in ["object", "oldObject"] {
            if !matches!(
                &request[field],
                Value::Object(_) | Value::Null | Value::Undefined
            ) {
                return Err(ReviewError::Field {
                    field,
                    problem: "must be an object",
                });
            }
        }
        let dry_run = match &request["dryRun"] {
            Value::Bool(b) => *b,
            Value::Undefined | Value::Null => false,
            _ => {
                return Err(ReviewError::Field {
                    field: "dryRun",
                    problem: "must be a boolean",
                });
            }
        };
        Ok(Request {
            uid,
            kind,
            namespace: optional_string(request, "namespace", "namespace")?,
            name: optional_string(request, "name", "name")?,
            operation,
            dry_run,
            document: request.clone(),
        })
    }
}

/// The AdmissionRequest the apiserver would send for creating `object`
/// (a manifest as `kubectl apply` reads it), as JSON.
pub fn create_request_for(object: &serde_json::Value) -> serde_json::Value {
    let text = |p: &str| object.pointer(p).and_then(|v| v.as_str()).unwrap_or("");
    let api_version = text("/apiVersion");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = serde_json::json!({"group": group, "version": version, "kind": text("/kind")});
    serde_json::json!({
        "uid": "tollgate-offline",
        "kind": gvk,
        "requestKind": gvk,
        "name": text("/metadata/name"),
        "namespace": text("/metadata/namespace"),
        "operation": "CREATE",
        "userInfo": {"username": "tollgate-offline"},
        "object": object,
        "oldObject": null,
        "dryRun": true,
    })
}

fn string_field(v: &Value, key: &str) -> Option<String> {
    match &v[key] {
        Value::String(s) => Some(s.to_string()),
        _ => None,
    }
}

fn required_string(request: &Value, field: &'static str) -> Result<String, ReviewError> {
    string_field(request, field).ok_or(ReviewError::Field {
        field,
        problem: "must be a string",
    })
}

fn optional_string(request: &Value, key: &str, field: &'static str) -> Result<String, ReviewError> {
    match &request[key] {
        Value::String(s) => Ok(s.to_string()),
        Value::Undefined | Value::Null => Ok(String::new()),
        _ => Err(ReviewError::Field {
            field,
            problem: "must be a string",
        }),
    }
}

fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        other => other.to_json_str().unwrap_or_default(),
    }
}

/// The answer to one AdmissionRequest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub uid: String,
    pub allowed: bool,
    /// Shown to the kubectl user verbatim on a denial.
    pub message: Option<String>,
    /// HTTP-style code for a denial (403 for a policy denial).
    pub code: Option<u16>,
    /// Each shown to the user as a `Warning:` line.
    pub warnings: Vec<String>,
    /// A JSON Patch, already serialized; sent base64-encoded.
    pub patch: Option<Vec<u8>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

#[derive(Serialize)]
struct StatusOut<'a> {
    code: u16,
    message: &'a str,
    reason: &'static str,
}

impl Response {
    /// The AdmissionReview JSON the apiserver expects.
    pub fn encode(&self) -> Vec<u8> {
        use base64::Engine as _;
        let status = self.message.as_deref().map(|message| StatusOut {
            code: self.code.unwrap_or(if self.allowed { 200 } else { 403 }),
            message,
            reason: if self.allowed { "" } else { "Forbidden" },
        });
        let out = ReviewOut {
            api_version: API_VERSION,
            kind: KIND,
            response: ResponseOut {
                uid: &self.uid,
                allowed: self.allowed,
                status,
                warnings: &self.warnings,
                patch_type: self.patch.as_ref().map(|_| "JSONPatch"),
                patch: self
                    .patch
                    .as_ref()
                    .map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
            },
        };
        // Serializing plain strings, bools and numbers cannot fail.
        serde_json::to_vec(&out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Request, ReviewError> {
        Request::decode(s.as_bytes())
    }

    #[test]
    fn decodes_a_review_as_the_apiserver_sends_it() {
        let r = Request::decode(include_bytes!("../testdata/pod-compliant.json")).unwrap();
        assert_eq!(r.uid, "0b4e6f55-8d1f-4a62-a1b8-3f1a9c2d7e10");
        assert_eq!(r.kind, "Pod");
        assert_eq!(r.namespace, "app-ml-team");
        assert_eq!(r.name, "trainer");
        assert_eq!(r.operation, "CREATE");
        assert!(!r.dry_run);
        assert_eq!(
            r.document["object"]["metadata"]["labels"]["team"],
            Value::from("ml")
        );
    }

    #[test]
    fn malformed_json_names_the_position() {
        let err = decode(r#"{"apiVersion": "admission.k8s.io/v1", "kind": }"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "body is not valid JSON: expected value at line 1 column 47"
        );
    }

    #[test]
    fn wrong_api_version_is_named() {
        let err = decode(
            r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported apiVersion \"admission.k8s.io/v1beta1\": expected \"admission.k8s.io/v1\""
        );
    }

    #[test]
    fn missing_request_is_named() {
        let err =
            decode(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#).unwrap_err();
        assert_eq!(err, ReviewError::MissingRequest);
        assert_eq!(err.to_string(), "AdmissionReview has no \"request\" object");
    }

    #[test]
    fn missing_uid_is_named() {
        let err = decode(
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"kind":"Pod"},"operation":"CREATE"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "AdmissionReview request.uid: must be a string"
        );
    }

    #[test]
    fn an_object_that_is_not_an_object_is_named() {
        let err = decode(
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":"pod"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "AdmissionReview request.object: must be an object"
        );
    }

    #[test]
    fn non_object_and_non_utf8_bodies_are_rejected() {
        assert_eq!(decode("[1,2]").unwrap_err(), ReviewError::NotAnObject);
        assert_eq!(
            Request::decode(b"{\"a\": \"\xff\"}").unwrap_err(),
            ReviewError::NotUtf8(7)
        );
    }

    #[test]
    fn a_denial_echoes_the_uid_with_status_and_warnings() {
        let json = Response {
            uid: "abc".into(),
            allowed: false,
            message: Some("no".into()),
            code: None,
            warnings: vec!["careful".into()],
            patch: None,
        }
        .encode();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": "abc", "allowed": false,
                    "status": {"code": 403, "message": "no", "reason": "Forbidden"},
                    "warnings": ["careful"]
                }
            })
        );
    }

    #[test]
    fn a_patch_is_base64_with_its_type() {
        let json = Response {
            uid: "u".into(),
            allowed: true,
            patch: Some(br#"[{"op":"add","path":"/a","value":1}]"#.to_vec()),
            ..Default::default()
        }
        .encode();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        assert_eq!(
            v["response"]["patch"],
            "W3sib3AiOiJhZGQiLCJwYXRoIjoiL2EiLCJ2YWx1ZSI6MX1d"
        );
    }
}
