//! What must hold for any body POSTed to the admission webhook, shared by the fuzz target
//! (`injector/fuzz`) and the corpus replay (`tests/fuzz_corpus.rs`), so the two cannot drift.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use mesh_config::MeshConfig;
use mesh_injector::admission::{decode, handle};
use mesh_injector::annotations as ann;
use mesh_injector::inject::{self, Decision, NamespaceInfo, Settings, SidecarMode, Skip};
use serde_json::Value;

/// How far one input went, so the corpus replay can show it reaches every path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Not an AdmissionReview the webhook answers (a 4xx with a message).
    Refused,
    /// Answered without a patch: skipped, denied, or not a CREATE.
    Answered,
    /// Answered with a patch that was applied and checked.
    Patched,
}

/// The first byte chooses the namespace the API server would report and the injector's
/// settings; the rest is the request body. A body that decodes is answered with a well-formed
/// AdmissionReview carrying its uid; a patch applies to the pod as the API server holds it,
/// gives a valid pod, and is not applied twice (re-invocation finds the sidecar).
pub fn admission_body(data: &[u8]) -> Outcome {
    let (choice, body) = match data.split_first() {
        Some((&choice, body)) => (choice, body),
        None => (0, data),
    };
    let ns = namespace(choice);
    let mut settings = Settings::new("tracemesh");
    if choice & 0x04 != 0 {
        settings.sidecar_mode = SidecarMode::Container;
    }
    settings.rewrite_probes = choice & 0x08 == 0;
    let config = MeshConfig::default();

    let answer = match handle(body, ns.as_ref(), &config, &settings) {
        Ok(answer) => answer,
        Err(e) => {
            // Refused with a status the server sends as is, and a message to read.
            assert!(e.status().is_client_error(), "{e}: {}", e.status());
            assert!(!e.to_string().is_empty());
            return Outcome::Refused;
        }
    };
    let sent: Value = serde_json::from_slice(body).expect("a decoded body is JSON");
    let out: Value = serde_json::from_slice(&answer).expect("the answer is JSON");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1", "{out}");
    assert_eq!(out["kind"], "AdmissionReview", "{out}");
    let response = &out["response"];
    let uid = sent["request"]["uid"].as_str().unwrap_or_default();
    assert_eq!(response["uid"], uid, "{out}");
    let allowed = response["allowed"].as_bool().expect("allowed is a boolean");
    if !allowed {
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "a denial without a reason: {out}");
    }
    let Some(patch) = response.get("patch") else {
        return Outcome::Answered;
    };
    assert!(allowed, "a patch on a denial: {out}");
    assert_eq!(response["patchType"], "JSONPatch", "{out}");
    let bytes: k8s_openapi::ByteString =
        serde_json::from_value(patch.clone()).expect("the patch is base64");
    let ops: json_patch::Patch =
        serde_json::from_slice(&bytes.0).expect("the patch is an RFC 6902 document");

    // The pod as the API server holds it: what the typed decode kept, written out again.
    let review = decode(body).expect("answered, so decoded");
    let pod = review.pod.as_ref().expect("a patch is only for a CREATE");
    let mut object = serde_json::to_value(pod).expect("pod as JSON");
    json_patch::patch(&mut object, &ops)
        .unwrap_or_else(|e| panic!("the patch does not apply: {e}"));
    let patched: Pod = serde_json::from_value(object).expect("the patched pod is a pod");
    let names: Vec<_> = patched
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .map(|c| c.name.as_str())
        .collect();
    for name in [ann::SIDECAR_CONTAINER, ann::INIT_CONTAINER] {
        let n = names.iter().filter(|&&n| n == name).count();
        assert_eq!(n, 1, "{name} {n} times in {names:?}");
    }
    let again = inject::decide(
        &patched,
        review.namespace(),
        ns.as_ref(),
        &config,
        &settings,
    );
    assert_eq!(
        again,
        Decision::Skip(Skip::AlreadyInjected),
        "injected twice"
    );
    Outcome::Patched
}

fn namespace(choice: u8) -> Option<NamespaceInfo> {
    let enrolled = || NamespaceInfo {
        labels: BTreeMap::from([(ann::MONITORED_BY.to_string(), "tracemesh".to_string())]),
        annotations: BTreeMap::new(),
    };
    let with = |value: &str| {
        let mut ns = enrolled();
        ns.annotations
            .insert(ann::SIDECAR_INJECTION.to_string(), value.to_string());
        Some(ns)
    };
    match choice & 0x03 {
        0 => None,
        1 => Some(enrolled()),
        2 => with("disabled"),
        _ => with("sometimes"),
    }
}
