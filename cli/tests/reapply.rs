//! Re-applying `mesh install` on a running mesh, simulated the way `kubectl apply` computes it
//! for a custom resource: a three-way JSON merge patch (CRDs carry no strategic-merge metadata)
//! from the last-applied annotation (original), the new manifest (modified) and the live object
//! (current), as `jsonmergepatch.CreateThreeWayJSONMergePatch` in k8s.io/apimachinery does:
//!
//! - changes: the RFC 7386 diff from current to modified, deletions dropped;
//! - deletions: the diff from original to modified, only its deletions (nulls) kept;
//! - the patch is both merged, and the API server applies it to the live object as a merge patch.
//!
//! So a field the manifest never names is never touched, and that is what keeps a
//! `mesh config patch` alive across re-installs.

use serde_json::{json, Map, Value};
use std::process::Command;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn install(args: &[&str]) -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("install")
        .args(args)
        .output()
        .expect("run mesh install");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn mesh_config(objects: &[Value]) -> Value {
    objects
        .iter()
        .find(|o| o["kind"] == "MeshConfig")
        .expect("a MeshConfig in the stream")
        .clone()
}

/// RFC 7386 diff: the merge patch that turns `from` into `to` (jsonpatch.CreateMergePatch).
fn merge_diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = Map::new();
            for (key, new) in to {
                match from.get(key) {
                    Some(old) if old == new => {}
                    Some(old) if old.is_object() && new.is_object() => {
                        patch.insert(key.clone(), merge_diff(old, new));
                    }
                    _ => {
                        patch.insert(key.clone(), new.clone());
                    }
                }
            }
            for key in from.keys() {
                if !to.contains_key(key) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

/// keepOrDeleteNullInObj: keeps only the deletions (`keep_null`) or only the rest; a sub-patch
/// that ends up empty is dropped, an explicitly empty map is a value.
fn keep_or_delete_null(patch: &Map<String, Value>, keep_null: bool) -> Map<String, Value> {
    let mut filtered = Map::new();
    for (key, value) in patch {
        match value {
            Value::Null if keep_null => {
                filtered.insert(key.clone(), Value::Null);
            }
            Value::Null => {}
            Value::Object(map) if map.is_empty() && !keep_null => {
                filtered.insert(key.clone(), value.clone());
            }
            Value::Object(map) if map.is_empty() => {}
            Value::Object(map) => {
                let sub = keep_or_delete_null(map, keep_null);
                if !sub.is_empty() {
                    filtered.insert(key.clone(), Value::Object(sub));
                }
            }
            _ if !keep_null => {
                filtered.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    filtered
}

fn three_way_merge_patch(original: &Value, modified: &Value, current: &Value) -> Value {
    let changes = merge_diff(current, modified);
    let deletions = merge_diff(original, modified);
    let mut patch = Value::Object(keep_or_delete_null(
        deletions.as_object().expect("object"),
        true,
    ));
    json_patch::merge(
        &mut patch,
        &Value::Object(keep_or_delete_null(
            changes.as_object().expect("object"),
            false,
        )),
    );
    patch
}

/// `kubectl apply` of one object: create with the last-applied annotation when absent, else
/// the three-way patch. Returns the live object and the patch sent (None for a create).
fn kubectl_apply(live: Option<Value>, manifest: &Value) -> (Value, Option<Value>) {
    let mut modified = manifest.clone();
    modified["metadata"]["annotations"] = json!({LAST_APPLIED: manifest.to_string()});
    match live {
        None => {
            // What the API server adds on create; the injector writes the status.
            let mut created = modified;
            created["metadata"]["uid"] = json!("7f1c");
            created["metadata"]["resourceVersion"] = json!("1");
            created["metadata"]["generation"] = json!(1);
            created["status"] = json!({"valid": true, "observedGeneration": 1});
            (created, None)
        }
        Some(mut live) => {
            let original: Value = serde_json::from_str(
                live["metadata"]["annotations"][LAST_APPLIED]
                    .as_str()
                    .expect("applied before"),
            )
            .expect("annotation is JSON");
            let patch = three_way_merge_patch(&original, &modified, &live);
            json_patch::merge(&mut live, &patch);
            (live, Some(patch))
        }
    }
}

/// `mesh config patch -p ...`: a merge patch on the live object, no annotation change.
fn mesh_config_patch(live: &mut Value, patch: Value) {
    json_patch::merge(live, &patch);
}

fn tracing(live: &Value) -> &Value {
    &live["spec"]["observability"]["tracing"]
}

#[test]
fn reapplying_the_default_install_keeps_a_patched_mesh_config_and_sends_nothing() {
    let manifest = mesh_config(&install(&[]));
    let (mut live, _) = kubectl_apply(None, &manifest);
    mesh_config_patch(
        &mut live,
        json!({"spec": {"observability": {"tracing": {"enable": true, "address": "zipkin.tracing"}},
                        "sidecar": {"logLevel": "debug"}}}),
    );
    let (live, patch) = kubectl_apply(Some(live), &mesh_config(&install(&[])));
    assert_eq!(patch, Some(json!({})), "a re-apply changes nothing");
    assert_eq!(tracing(&live)["enable"], true);
    assert_eq!(tracing(&live)["address"], "zipkin.tracing");
    assert_eq!(live["spec"]["sidecar"]["logLevel"], "debug");
}

#[test]
fn reapplying_with_tracing_flags_keeps_every_field_the_flags_do_not_set() {
    let flags = ["--enable-tracing", "--tracing-address", "zipkin.tracing"];
    let (mut live, _) = kubectl_apply(None, &mesh_config(&install(&flags)));
    mesh_config_patch(
        &mut live,
        json!({"spec": {"observability": {"tracing": {"sampledFraction": 0.1, "protocol": "otlp-http",
                                                       "port": 4318, "endpoint": "/v1/traces"}},
                        "traffic": {"outboundPortExclusionList": [5432]}}}),
    );
    let (live, patch) = kubectl_apply(Some(live), &mesh_config(&install(&flags)));
    assert_eq!(patch, Some(json!({})));
    assert_eq!(tracing(&live)["sampledFraction"], 0.1);
    assert_eq!(tracing(&live)["protocol"], "otlp-http");
    assert_eq!(tracing(&live)["port"], 4318);
    assert_eq!(
        live["spec"]["traffic"]["outboundPortExclusionList"],
        json!([5432])
    );
    // What the flags set is the stream's: kubectl re-asserts it, as it does for any field it applied.
    assert_eq!(tracing(&live)["address"], "zipkin.tracing");
}

#[test]
fn a_stream_that_names_every_default_would_undo_the_patch() {
    // The check itself can fail: a MeshConfig with every field written out, as earlier releases
    // printed it, takes the patched value back on the next apply.
    let full = json!({
        "apiVersion": "config.tracemesh.dev/v1alpha1", "kind": "MeshConfig",
        "metadata": {"name": "mesh-config", "namespace": "mesh-system"},
        "spec": {"observability": {"tracing": {"enable": false, "address": "jaeger.mesh-system.svc.cluster.local",
                                               "port": 9411}}}
    });
    let (mut live, _) = kubectl_apply(None, &full);
    mesh_config_patch(
        &mut live,
        json!({"spec": {"observability": {"tracing": {"enable": true}}}}),
    );
    let (live, patch) = kubectl_apply(Some(live), &full);
    assert_eq!(
        patch,
        Some(json!({"spec": {"observability": {"tracing": {"enable": false}}}}))
    );
    assert_eq!(tracing(&live)["enable"], false);
}

#[test]
fn a_field_dropped_from_the_stream_is_deleted_and_one_never_applied_is_kept() {
    // The simulation's deletion half: `address` was applied by the first stream and is gone from
    // the second, so kubectl removes it; `port` came from a patch and stays, because the
    // default stream still names the (empty) tracing block. Had the block gone from the stream,
    // kubectl would delete it whole, port included.
    let flags = ["--tracing-address", "zipkin.tracing"];
    let (mut live, _) = kubectl_apply(None, &mesh_config(&install(&flags)));
    mesh_config_patch(
        &mut live,
        json!({"spec": {"observability": {"tracing": {"port": 9412}}}}),
    );
    let (live, patch) = kubectl_apply(Some(live), &mesh_config(&install(&[])));
    let mut patch = patch.expect("a patch");
    // The new last-applied annotation is part of the patch; the rest is what matters here.
    patch.as_object_mut().expect("object").remove("metadata");
    assert_eq!(
        patch,
        json!({"spec": {"observability": {"tracing": {"address": null}}}})
    );
    assert!(tracing(&live).get("address").is_none());
    assert_eq!(tracing(&live)["port"], 9412);
}

#[test]
fn reapplying_the_whole_stream_patches_no_object() {
    let first = install(&[]);
    let second = install(&[]);
    assert_eq!(first.len(), second.len());
    for (before, after) in first.iter().zip(&second) {
        let (live, _) = kubectl_apply(None, before);
        let (_, patch) = kubectl_apply(Some(live), after);
        assert_eq!(
            patch,
            Some(json!({})),
            "{} {} would change",
            after["kind"],
            after["metadata"]["name"]
        );
    }
}

/// The webhooks list keyed by name: how a strategic merge patch sees it (`MutatingWebhook` is
/// `patchStrategy: merge, patchMergeKey: name` in k8s.io/api), so the JSON three-way merge on
/// this form gives what kubectl's strategic three-way merge gives for the list.
fn webhooks_by_name(object: &Value) -> Value {
    let mut keyed = object.clone();
    let hooks: Map<String, Value> = object["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .map(|hook| {
            (
                hook["name"].as_str().expect("name").to_string(),
                hook.clone(),
            )
        })
        .collect();
    keyed["webhooks"] = Value::Object(hooks);
    keyed
}

#[test]
fn reapplying_keeps_the_ca_bundle_the_injector_patched_into_the_webhook() {
    let stream = install(&[]);
    let webhook = stream
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .expect("webhook")
        .clone();
    let (mut live, _) = kubectl_apply(None, &webhook);
    // The injector patches its CA into every webhook of its configuration.
    for hook in live["webhooks"].as_array_mut().expect("webhooks") {
        hook["clientConfig"]["caBundle"] = json!("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==");
    }
    let original: Value = serde_json::from_str(
        live["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .expect("annotation"),
    )
    .expect("JSON");
    let mut modified = webhook.clone();
    modified["metadata"]["annotations"] = json!({LAST_APPLIED: webhook.to_string()});

    let patch = three_way_merge_patch(
        &webhooks_by_name(&original),
        &webhooks_by_name(&modified),
        &webhooks_by_name(&live),
    );
    assert_eq!(patch, json!({}), "a re-apply leaves the caBundle alone");

    // Without the merge key (lists replaced whole, as a JSON merge patch does) the same re-apply
    // would send the manifest's list and drop the bundle: the merge key is what keeps it.
    let as_json = three_way_merge_patch(&original, &modified, &live);
    assert!(as_json.get("webhooks").is_some(), "{as_json}");
}
