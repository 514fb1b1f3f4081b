//! The MeshConfig custom resource as the Kubernetes API names it, for every kube client of the
//! document (the injector's watcher, the CLI's kube backend). The CRD (`crd`, written out as
//! manifests/crd.yaml) is built from these names.

pub const GROUP: &str = "config.tracemesh.dev";
pub const VERSION: &str = "v1alpha1";
pub const PLURAL: &str = "meshconfigs";

/// The dynamic API's view of the resource (the document's own types carry the schema, so no
/// `CustomResource` type is derived: they hold `apiVersion`, `kind` and serde defaults of
/// their own, and `sampledFraction` is a number or a string).
#[cfg(feature = "kube")]
pub fn api_resource() -> kube::core::ApiResource {
    kube::core::ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: crate::API_VERSION.into(),
        kind: crate::KIND.into(),
        plural: PLURAL.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_is_group_and_version() {
        assert_eq!(crate::API_VERSION, format!("{GROUP}/{VERSION}"));
    }
}
