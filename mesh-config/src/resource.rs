//! The MeshConfig custom resource as the Kubernetes API names it, for every kube client of the
//! document (the injector's watcher, the CLI's kube backend). The CRD in manifests/crd.yaml
//! declares the same group, version and plural.

pub const GROUP: &str = "config.tracemesh.dev";
pub const VERSION: &str = "v1alpha1";
pub const PLURAL: &str = "meshconfigs";

/// The dynamic API's view of the resource (no generated type: the schema is owned here).
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
