//! What must hold for any input to the MeshConfig parser, shared by the fuzz targets
//! (`mesh-config/fuzz`) and the corpus replay (`tests/fuzz_corpus.rs`), so the two cannot drift.

use mesh_config::{bounded, merge_patch, parse, parse_strict, ConfigError, MeshConfig};

/// Arbitrary text: no panic; the bounds refuse exactly what `bounded::check` refuses; a strict
/// accept is a lenient accept without warnings; an accepted config is written out as YAML and
/// as JSON and read back strictly to the same config.
pub fn parse_text(text: &str) {
    let lenient = parse(text);
    let strict = parse_strict(text);
    let bounded = bounded::check(text);
    if let Err(e) = &bounded {
        assert_eq!(
            lenient.as_ref().err(),
            Some(e),
            "lenient parse past a bound"
        );
        assert_eq!(strict.as_ref().err(), Some(e), "strict parse past a bound");
        return;
    }
    assert!(
        !matches!(lenient, Err(ConfigError::Bounds(_))),
        "a bound refused by the parse but not by the check"
    );
    if let Ok(config) = &strict {
        let parsed = lenient.as_ref().expect("strict accepts, lenient refuses");
        assert_eq!(&parsed.config, config, "strict and lenient disagree");
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }
    if let Ok(parsed) = &lenient {
        round_trip(&parsed.config);
    }
}

/// Arbitrary JSON as a merge patch on the default document: no panic, and an accepted result
/// reads back to itself.
pub fn patch_text(text: &str) {
    let Ok(patch) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    if let Ok(config) = merge_patch(&MeshConfig::default(), &patch) {
        round_trip(&config);
        // Patching with the whole document is the identity.
        let again = merge_patch(&config, &config.to_json_value()).expect("self patch");
        assert_eq!(again, config, "patching with itself changed the document");
    }
}

fn round_trip(config: &MeshConfig) {
    let yaml = config.to_yaml();
    let back = parse_strict(&yaml).unwrap_or_else(|e| panic!("{e}\n--- written as ---\n{yaml}"));
    assert_eq!(&back, config, "YAML round trip\n{yaml}");
    let json = config.to_json_value().to_string();
    let back = parse_strict(&json).unwrap_or_else(|e| panic!("{e}\n--- written as ---\n{json}"));
    assert_eq!(&back, config, "JSON round trip\n{json}");
}
