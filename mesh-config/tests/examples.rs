//! The documents in `examples/` stay valid under the strict rules of `mesh config validate`.

use std::path::{Path, PathBuf};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn example_mesh_configs_are_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(examples()).expect("examples/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.starts_with("mesh-config") || name.starts_with("fsm-")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let config =
            mesh_config::parse_strict(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            config.spec.observability.tracing.enable,
            "{name} enables tracing"
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "every example document was checked");
}

#[test]
fn fsm_string_fraction_and_otlp_example_read_as_meant() {
    let otlp = std::fs::read_to_string(examples().join("mesh-config-otlp.yaml")).expect("readable");
    let config = mesh_config::parse_strict(&otlp).expect("valid");
    let tracing = &config.spec.observability.tracing;
    assert_eq!(tracing.protocol, mesh_config::Protocol::OtlpGrpc);
    assert_eq!(tracing.sampled_fraction, 0.1);
    assert_eq!(
        config.spec.traffic.outbound_ip_range_exclusion_list,
        vec!["169.254.169.254/32".to_string()]
    );
}
