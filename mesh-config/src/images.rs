//! The release images: one home for the names `mesh install` writes into the manifests and the
//! injector puts into pods by default.

/// Where release images are published; `mesh install --registry` points at a mirror.
pub const REGISTRY: &str = "ghcr.io/tracemesh";
/// The sidecar image (also run by the `mesh-init` init container).
pub const PROXY: &str = "mesh-proxy";
/// The webhook and MeshConfig server image.
pub const INJECTOR: &str = "mesh-injector";

/// The image tag of this release, `v<version>`: every crate of the workspace shares the version.
pub fn release_tag() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// `registry/name:tag`.
pub fn reference(registry: &str, name: &str, tag: &str) -> String {
    format!("{registry}/{name}:{tag}")
}
