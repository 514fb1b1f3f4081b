//! AdmissionReview `admission.k8s.io/v1` in and out. Everything that is wrong with a request
//! becomes an `AdmissionError` with its HTTP status, so the server never panics on input and
//! the caller learns what to fix.

use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde_json::Value;

use mesh_config::MeshConfig;

use crate::inject::{self, Decision, NamespaceInfo, Settings, Skip};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmissionError {
    #[error("unsupported Content-Type {0:?}: send application/json")]
    UnsupportedMediaType(String),
    #[error("empty body: expected an AdmissionReview (admission.k8s.io/v1)")]
    EmptyBody,
    #[error("malformed AdmissionReview JSON: {0}")]
    MalformedJson(String),
    #[error("unsupported AdmissionReview version {0:?}: this webhook speaks admission.k8s.io/v1")]
    WrongVersion(String),
    #[error("expected kind \"AdmissionReview\", got {0:?}")]
    WrongKind(String),
    #[error("the AdmissionReview has no request")]
    MissingRequest,
    #[error("this webhook mutates Pods, got {0}")]
    NotAPod(String),
    #[error("the request has no object: a Pod CREATE carries the pod")]
    MissingObject,
    #[error("the object is not a valid Pod: {0}")]
    BadPod(String),
}

impl AdmissionError {
    pub fn status(&self) -> StatusCode {
        match self {
            AdmissionError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A decoded review: the request (for its uid) and, for a Pod CREATE, the pod.
pub struct Review {
    pub request: AdmissionRequest<DynamicObject>,
    /// `None` for operations other than CREATE, which are let through untouched.
    pub pod: Option<Pod>,
}

impl Review {
    pub fn namespace(&self) -> &str {
        self.request
            .namespace
            .as_deref()
            .or_else(|| {
                self.pod
                    .as_ref()
                    .and_then(|p| p.metadata.namespace.as_deref())
            })
            .unwrap_or("default")
    }
}

pub fn check_content_type(content_type: Option<&str>) -> Result<(), AdmissionError> {
    let ct = content_type.unwrap_or_default();
    let media = ct.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(AdmissionError::UnsupportedMediaType(ct.to_string()))
    }
}

pub fn decode(body: &[u8]) -> Result<Review, AdmissionError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdmissionError::EmptyBody);
    }
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| AdmissionError::MalformedJson(e.to_string()))?;
    let version = raw
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if version != "admission.k8s.io/v1" {
        return Err(AdmissionError::WrongVersion(version.to_string()));
    }
    // The answer echoes the request's kind: any other kind would be answered in kind, and the
    // API server rejects an answer that is not an AdmissionReview.
    let kind = raw.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind != "AdmissionReview" {
        return Err(AdmissionError::WrongKind(kind.to_string()));
    }
    if raw.get("request").is_none_or(Value::is_null) {
        return Err(AdmissionError::MissingRequest);
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(raw).map_err(|e| AdmissionError::MalformedJson(e.to_string()))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| AdmissionError::MissingRequest)?;
    // Only a Pod CREATE is ever mutated; anything else is let through whatever its kind (a
    // CONNECT for `kubectl exec` carries `PodExecOptions`), as refusing it would block it.
    if request.operation != Operation::Create {
        return Ok(Review { request, pod: None });
    }
    if request.kind.kind != "Pod" || !request.kind.group.is_empty() {
        let gk = if request.kind.group.is_empty() {
            request.kind.kind.clone()
        } else {
            format!("{}.{}", request.kind.kind, request.kind.group)
        };
        return Err(AdmissionError::NotAPod(format!("kind {gk:?}")));
    }
    let object = request
        .object
        .as_ref()
        .ok_or(AdmissionError::MissingObject)?;
    if let Some(types) = &object.types {
        if types.kind != "Pod" {
            return Err(AdmissionError::NotAPod(format!(
                "an object of kind {:?}",
                types.kind
            )));
        }
    }
    let value = serde_json::to_value(object).map_err(|e| AdmissionError::BadPod(e.to_string()))?;
    let pod: Pod =
        serde_json::from_value(value).map_err(|e| AdmissionError::BadPod(e.to_string()))?;
    if pod.spec.is_none() {
        return Err(AdmissionError::BadPod("no spec".into()));
    }
    Ok(Review {
        request,
        pod: Some(pod),
    })
}

/// One request body in, the AdmissionReview answer out, with the namespace given instead of
/// read from the API server: the server's path (`server::mutate`) without its I/O, for the fuzz
/// target and the corpus replay test. Every body that decodes gets an answer with its uid.
pub fn handle(
    body: &[u8],
    ns: Option<&NamespaceInfo>,
    config: &MeshConfig,
    settings: &Settings,
) -> Result<Vec<u8>, AdmissionError> {
    let review = decode(body)?;
    let decision = match &review.pod {
        None => Decision::Skip(Skip::NotACreate),
        Some(pod) => inject::decide(pod, review.namespace(), ns, config, settings),
    };
    Ok(respond(&review.request, &decision))
}

/// The answer to a decoded review, with the request's uid.
pub fn respond(request: &AdmissionRequest<DynamicObject>, decision: &Decision) -> Vec<u8> {
    let base = AdmissionResponse::from(request);
    let response = match decision {
        Decision::Skip(_) => base,
        Decision::Deny(message) => {
            let mut r = base.deny(message);
            r.result.code = 403;
            r.result.reason = "Forbidden".into();
            r
        }
        Decision::Inject(ops) => match base.clone().with_patch(json_patch::Patch(ops.clone())) {
            Ok(r) => r,
            Err(e) => base.deny(format!("internal error encoding the patch: {e}")),
        },
    };
    encode(response)
}

/// kube serializes `patch` as a JSON array of numbers; the API server expects base64 (Go's
/// `[]byte`), so the field is re-encoded here.
fn encode(response: AdmissionResponse) -> Vec<u8> {
    let mut v = serde_json::to_value(response.into_review()).unwrap_or(Value::Null);
    if let Some(patch) = v.pointer_mut("/response/patch") {
        if let Value::Array(items) = patch {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(Value::as_u64)
                .map(|b| b as u8)
                .collect();
            *patch = serde_json::to_value(k8s_openapi::ByteString(bytes)).unwrap_or(Value::Null);
        }
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(object: Value, kind: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop", "operation": "CREATE",
                "userInfo": {"username": "admin"}, "object": object
            }
        }))
        .expect("json")
    }

    #[test]
    fn bad_inputs_have_clear_errors() {
        assert_eq!(
            check_content_type(Some("text/plain")).map_err(|e| e.status()),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert!(check_content_type(Some("application/json; charset=utf-8")).is_ok());
        assert!(check_content_type(None).is_err());
        assert_eq!(decode(b"").err(), Some(AdmissionError::EmptyBody));
        assert!(matches!(
            decode(b"{nope").err(),
            Some(AdmissionError::MalformedJson(_))
        ));
        assert!(matches!(
            decode(br#"{"apiVersion":"admission.k8s.io/v1beta1"}"#).err(),
            Some(AdmissionError::WrongVersion(_))
        ));
        assert_eq!(
            decode(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#).err(),
            Some(AdmissionError::MissingRequest)
        );
        // Found by the admission fuzz target: the answer took the request's kind.
        assert_eq!(
            decode(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmisonReview","request":{}}"#)
                .err(),
            Some(AdmissionError::WrongKind("AdmisonReview".into()))
        );
        let svc = review(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}),
            "Service",
        );
        assert!(matches!(
            decode(&svc).err(),
            Some(AdmissionError::NotAPod(_))
        ));
        let bad = review(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "x"}}),
            "Pod",
        );
        assert!(matches!(
            decode(&bad).err(),
            Some(AdmissionError::BadPod(_))
        ));
    }

    #[test]
    fn patch_is_base64_and_uid_echoed() {
        let body = review(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}),
            "Pod",
        );
        let r = decode(&body).expect("decode");
        let ops = vec![json_patch::PatchOperation::Add(json_patch::AddOperation {
            path: json_patch::jsonptr::PointerBuf::parse("/metadata/labels").expect("ptr"),
            value: json!({"a": "b"}),
        })];
        let out: Value =
            serde_json::from_slice(&respond(&r.request, &Decision::Inject(ops))).expect("json");
        assert_eq!(
            out["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        let b64 = out["response"]["patch"].as_str().expect("string");
        let bytes: k8s_openapi::ByteString = serde_json::from_value(json!(b64)).expect("base64");
        let patch: Value = serde_json::from_slice(&bytes.0).expect("patch json");
        assert_eq!(patch[0]["path"], "/metadata/labels");
    }
}
