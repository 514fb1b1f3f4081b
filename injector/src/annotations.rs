//! The labels and annotations the injector reads and writes. One place, so the manifests, the
//! CLI and the webhook cannot drift apart.

/// Namespace label that enrols a namespace in a mesh; its value is the mesh name.
pub const MONITORED_BY: &str = "tracemesh.dev/monitored-by";
/// `enabled` / `disabled`, on a namespace or a pod (a label is also accepted on pods so that a
/// webhook `objectSelector` can see an opt-in; the annotation wins when both are set).
pub const SIDECAR_INJECTION: &str = "tracemesh.dev/sidecar-injection";
/// `native` (init container with `restartPolicy: Always`) or `container` (for clusters < 1.29).
pub const SIDECAR_MODE: &str = "tracemesh.dev/sidecar-mode";
pub const OUTBOUND_PORT_EXCLUSIONS: &str = "tracemesh.dev/outbound-port-exclusion-list";
pub const INBOUND_PORT_EXCLUSIONS: &str = "tracemesh.dev/inbound-port-exclusion-list";
pub const OUTBOUND_IP_RANGE_EXCLUSIONS: &str = "tracemesh.dev/outbound-ip-range-exclusion-list";
pub const PROXY_CPU: &str = "tracemesh.dev/proxy-cpu";
pub const PROXY_MEMORY: &str = "tracemesh.dev/proxy-memory";
pub const PROXY_CPU_LIMIT: &str = "tracemesh.dev/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "tracemesh.dev/proxy-memory-limit";
/// `off`, `request-id` or `in-flight`, on a pod or its namespace: the sidecar's stitching mode
/// for this pod (env `MESH_STITCHING`), over the MeshConfig's.
pub const STITCHING: &str = "tracemesh.dev/stitching";
/// Written by the injector: what was injected (mesh, image, mode), like Istio's sidecar status.
pub const SIDECAR_STATUS: &str = "tracemesh.dev/sidecar-status";
/// Written by the injector: the PEM CA of the config server, projected into the sidecar as a
/// file through a downwardAPI volume.
pub const CONFIG_CA: &str = "tracemesh.dev/config-ca";
/// Written by the injector on meshed pods so selectors can find them.
pub const MESH_LABEL: &str = "tracemesh.dev/mesh-name";

/// Namespaces that never get sidecars: the cluster's own and the control plane's.
pub const IGNORED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "mesh-system"];

pub const INIT_CONTAINER: &str = "mesh-init";
pub const SIDECAR_CONTAINER: &str = "mesh-proxy";
