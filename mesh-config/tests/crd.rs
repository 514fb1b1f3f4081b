//! manifests/crd.yaml is generated from the document's types (`mesh_config::crd`): this test
//! fails when the two differ, and rewrites the file when asked to.

use std::path::PathBuf;

const REGENERATE: &str = "UPDATE_CRD=1 cargo test -p mesh-config --test crd";

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crd.yaml")
}

#[test]
fn manifests_crd_yaml_is_the_generated_crd() {
    let generated = mesh_config::crd::yaml();
    let path = checked_in();
    if std::env::var_os("UPDATE_CRD").is_some() {
        std::fs::write(&path, &generated).expect("write manifests/crd.yaml");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).expect("read manifests/crd.yaml");
    if on_disk == generated {
        return;
    }
    let line = on_disk
        .lines()
        .zip(generated.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| on_disk.lines().count().min(generated.lines().count()));
    panic!(
        "manifests/crd.yaml is not what the mesh-config types generate (first difference at line \
         {}:\n  checked in: {:?}\n  generated:  {:?})\nRegenerate it with\n  {REGENERATE}",
        line + 1,
        on_disk.lines().nth(line).unwrap_or("<end of file>"),
        generated.lines().nth(line).unwrap_or("<end of file>"),
    );
}

/// The generated file reads back as the object it was made from, so nothing is lost in YAML
/// (in particular the stitching mode `off`, which a YAML 1.1 reader takes for a boolean unless
/// it is quoted).
#[test]
fn generated_yaml_reads_back_as_the_definition() {
    let text = mesh_config::crd::yaml();
    let back: serde_json::Value = serde_yaml::from_str(&text).expect("YAML");
    assert_eq!(back, mesh_config::crd::definition());
    assert!(
        text.contains("- 'off'") || text.contains("- \"off\""),
        "{text}"
    );
}
