//! The injection decision and the JSONPatch that carries it out. Pure: (pod, namespace, mesh
//! config, settings) in, decision out, so every rule is testable without a server.
//!
//! Patch paths are built for the pod as it is: a missing `initContainers`, `volumes`, `labels` or
//! `annotations` is added whole, because an RFC 6902 `add` to `/spec/volumes/-` fails when
//! `/spec/volumes` does not exist (the classic injector bug).

use std::collections::{BTreeMap, BTreeSet};

use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIVolumeFile, DownwardAPIVolumeSource,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_config::MeshConfig;
use serde_json::{json, Value};

use crate::annotations as ann;
use crate::probes;

pub const PROXY_UID: i64 = 1500;
pub const OUTBOUND_PORT: i32 = 15001;
pub const INBOUND_PORT: i32 = 15003;
pub const ADMIN_PORT: i32 = 15000;
const TMP_VOLUME: &str = "mesh-proxy-tmp";
const CA_VOLUME: &str = "mesh-config-ca";
const CA_DIR: &str = "/etc/mesh-proxy/config-ca";

/// How the sidecar is placed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes >= 1.29): it starts before
    /// the app, stops after it, and does not keep Jobs from completing.
    #[default]
    Native,
    /// A regular container placed first, for clusters older than 1.29.
    Container,
}

impl SidecarMode {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "native" => Some(Self::Native),
            "container" => Some(Self::Container),
            _ => None,
        }
    }
}

/// What the injector was started with; the same for every pod.
#[derive(Clone, Debug)]
pub struct Settings {
    pub mesh_name: String,
    pub proxy_image: String,
    pub sidecar_mode: SidecarMode,
    /// Where sidecars long-poll their MeshConfig.
    pub config_url: String,
    /// PEM of the CA that signed the config server's certificate, handed to the sidecar.
    pub config_ca_pem: Option<String>,
    pub rewrite_probes: bool,
}

impl Settings {
    pub fn new(mesh_name: &str) -> Self {
        Self {
            mesh_name: mesh_name.into(),
            proxy_image: default_proxy_image(),
            sidecar_mode: SidecarMode::Native,
            config_url: "https://mesh-injector.mesh-system.svc:9090/v1/meshconfig".into(),
            config_ca_pem: None,
            rewrite_probes: true,
        }
    }
}

pub fn default_proxy_image() -> String {
    use mesh_config::images;
    images::reference(images::REGISTRY, images::PROXY, &images::release_tag())
}

/// The namespace as the injector sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceInfo {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    IgnoredNamespace(String),
    HostNetwork,
    AlreadyInjected,
    PodOptOut,
    NamespaceNotEnrolled,
    NamespaceInjectionDisabled,
    NotACreate,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::IgnoredNamespace(ns) => write!(f, "namespace {ns} is never injected"),
            Skip::HostNetwork => f.write_str("pod uses hostNetwork"),
            Skip::AlreadyInjected => f.write_str("pod already has the mesh-proxy sidecar"),
            Skip::PodOptOut => write!(f, "pod has {}: disabled", ann::SIDECAR_INJECTION),
            Skip::NamespaceNotEnrolled => f.write_str("namespace is not enrolled in this mesh"),
            Skip::NotACreate => f.write_str("only pod creation is mutated"),
            Skip::NamespaceInjectionDisabled => {
                write!(f, "namespace has {}: disabled", ann::SIDECAR_INJECTION)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Inject(Vec<PatchOperation>),
    Skip(Skip),
    /// The pod asks for something invalid; the message goes back to the user.
    Deny(String),
}

/// Decides for one pod being created in `namespace`.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    ns: Option<&NamespaceInfo>,
    config: &MeshConfig,
    settings: &Settings,
) -> Decision {
    if ann::IGNORED_NAMESPACES.contains(&namespace) {
        return Decision::Skip(Skip::IgnoredNamespace(namespace.into()));
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Decision::Skip(Skip::HostNetwork);
    }
    if already_injected(pod) {
        return Decision::Skip(Skip::AlreadyInjected);
    }
    let pod_choice = match pod_injection_choice(pod) {
        Ok(c) => c,
        Err(e) => return Decision::Deny(e),
    };
    match pod_choice {
        Some(false) => return Decision::Skip(Skip::PodOptOut),
        Some(true) => {}
        None => {
            let Some(ns) = ns.filter(|ns| {
                ns.labels.get(ann::MONITORED_BY).map(String::as_str) == Some(&settings.mesh_name)
            }) else {
                return Decision::Skip(Skip::NamespaceNotEnrolled);
            };
            match ns.annotations.get(ann::SIDECAR_INJECTION).map(String::as_str) {
                None | Some("enabled") => {}
                Some("disabled") => return Decision::Skip(Skip::NamespaceInjectionDisabled),
                Some(other) => {
                    return Decision::Deny(format!(
                        "namespace {namespace} has an invalid {} annotation {other:?}: expected \"enabled\" or \"disabled\"",
                        ann::SIDECAR_INJECTION
                    ))
                }
            }
        }
    }
    let stitching = match crate::stitching::choice(pod, ns) {
        Ok(s) => s,
        Err(e) => return Decision::Deny(e),
    };
    if let Some(name) = taken_name(pod) {
        // Two containers of one name are refused by the API server: say why here instead.
        return Decision::Deny(format!(
            "the pod already has a container named {name}, a name the mesh needs for its own; rename it, or opt the pod out with the annotation {}: disabled",
            ann::SIDECAR_INJECTION
        ));
    }
    match build_patch(pod, config, settings, stitching) {
        Ok(ops) => Decision::Inject(ops),
        Err(e) => Decision::Deny(e),
    }
}

fn already_injected(pod: &Pod) -> bool {
    let has_proxy = |cs: Option<&Vec<Container>>| {
        cs.into_iter()
            .flatten()
            .any(|c| c.name == ann::SIDECAR_CONTAINER)
    };
    let spec = pod.spec.as_ref();
    has_proxy(spec.map(|s| &s.containers))
        || has_proxy(spec.and_then(|s| s.init_containers.as_ref()))
}

/// A name the injection would add that one of the pod's own containers already has (the
/// sidecar's own name means the pod is injected already, and is handled before this).
fn taken_name(pod: &Pod) -> Option<&'static str> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == ann::INIT_CONTAINER)
        .then_some(ann::INIT_CONTAINER)
}

/// `Some(true)` opt-in, `Some(false)` opt-out, `None` follow the namespace. The annotation wins
/// over the label (the label exists so a webhook objectSelector can see opt-ins).
fn pod_injection_choice(pod: &Pod) -> Result<Option<bool>, String> {
    let meta = &pod.metadata;
    let (source, value) = match (
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(ann::SIDECAR_INJECTION)),
        meta.labels
            .as_ref()
            .and_then(|l| l.get(ann::SIDECAR_INJECTION)),
    ) {
        (Some(v), _) => ("annotation", v),
        (None, Some(v)) => ("label", v),
        (None, None) => return Ok(None),
    };
    match value.as_str() {
        "enabled" => Ok(Some(true)),
        "disabled" => Ok(Some(false)),
        other => Err(format!(
            "pod {source} {}: {other:?} is invalid: expected \"enabled\" or \"disabled\"",
            ann::SIDECAR_INJECTION
        )),
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn build_patch(
    pod: &Pod,
    config: &MeshConfig,
    settings: &Settings,
    stitching: Option<mesh_config::Stitching>,
) -> Result<Vec<PatchOperation>, String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Err("pod has no spec".into());
    };
    let mode = match annotation(pod, ann::SIDECAR_MODE) {
        None => settings.sidecar_mode,
        Some(v) => SidecarMode::parse(v).ok_or_else(|| {
            format!(
                "pod annotation {}: {v:?} is invalid: expected \"native\" or \"container\"",
                ann::SIDECAR_MODE
            )
        })?,
    };
    let rewrite = if settings.rewrite_probes {
        probes::rewrite(&spec.containers).map_err(|e| e.to_string())?
    } else {
        probes::Rewrite::default()
    };
    let init = init_container(pod, config, settings)?;
    let mut sidecar = sidecar_container(pod, settings, mode, &rewrite)?;
    if let Some(mode) = stitching {
        sidecar
            .env
            .get_or_insert_with(Vec::new)
            .push(env("MESH_STITCHING", mode.as_str()));
    }

    let mut ops = Vec::new();
    // Probe replacements first: in container mode the sidecar insertion shifts indices.
    for r in &rewrite.replacements {
        ops.push(replace(
            &format!("/spec/containers/{}/{}", r.container, r.kind.field()),
            to_value(&r.probe)?,
        ));
    }
    match (&spec.init_containers, mode) {
        (None, SidecarMode::Native) => ops.push(add(
            "/spec/initContainers",
            json!([to_value(&init)?, to_value(&sidecar)?]),
        )),
        (None, SidecarMode::Container) => {
            ops.push(add("/spec/initContainers", json!([to_value(&init)?])))
        }
        (Some(_), mode) => {
            // mesh-init first so the other init containers' traffic is already redirected;
            // the native sidecar right after it so it serves them.
            ops.push(add("/spec/initContainers/0", to_value(&init)?));
            if mode == SidecarMode::Native {
                ops.push(add("/spec/initContainers/1", to_value(&sidecar)?));
            }
        }
    }
    if mode == SidecarMode::Container {
        ops.push(add("/spec/containers/0", to_value(&sidecar)?));
    }
    let mut volumes = vec![Volume {
        name: TMP_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let status =
        json!({"mesh": settings.mesh_name, "image": settings.proxy_image, "mode": match mode {
        SidecarMode::Native => "native", SidecarMode::Container => "container" }})
        .to_string();
    let mut annotations = vec![(ann::SIDECAR_STATUS, status)];
    if let Some(ca) = &settings.config_ca_pem {
        // The CA Secret lives in mesh-system, which pods elsewhere cannot mount; a pod can
        // always project its own annotation into a file, which is what MESH_CONFIG_CA names.
        annotations.push((ann::CONFIG_CA, ca.clone()));
        volumes.push(ca_volume());
    }
    let volumes = volumes
        .iter()
        .map(to_value)
        .collect::<Result<Vec<_>, _>>()?;
    match &spec.volumes {
        None => ops.push(add("/spec/volumes", Value::Array(volumes))),
        Some(_) => ops.extend(volumes.into_iter().map(|v| add("/spec/volumes/-", v))),
    }
    add_to_map(
        &mut ops,
        "/metadata/annotations",
        pod.metadata.annotations.is_some(),
        &annotations,
    );
    let labels = [(ann::MESH_LABEL, settings.mesh_name.clone())];
    add_to_map(
        &mut ops,
        "/metadata/labels",
        pod.metadata.labels.is_some(),
        &labels,
    );
    Ok(ops)
}

fn ca_volume() -> Volume {
    Volume {
        name: CA_VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "ca.crt".into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{}']", ann::CONFIG_CA),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn add_to_map(ops: &mut Vec<PatchOperation>, path: &str, exists: bool, entries: &[(&str, String)]) {
    if exists {
        for (key, value) in entries {
            ops.push(add(
                &format!("{path}/{}", escape_pointer(key)),
                Value::String(value.clone()),
            ));
        }
    } else {
        let map: serde_json::Map<String, Value> = entries
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::String(v.clone())))
            .collect();
        ops.push(add(path, Value::Object(map)));
    }
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn add(path: &str, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(path),
        value,
    })
}

fn replace(path: &str, value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation {
        path: pointer(path),
        value,
    })
}

fn pointer(path: &str) -> json_patch::jsonptr::PointerBuf {
    // Paths here are built from escaped segments, so they are always valid pointers.
    json_patch::jsonptr::PointerBuf::parse(path).unwrap_or_default()
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("internal error encoding the patch: {e}"))
}

fn init_container(
    pod: &Pod,
    config: &MeshConfig,
    settings: &Settings,
) -> Result<Container, String> {
    let traffic = &config.spec.traffic;
    // The sidecar's own admin and probe ports are served by the sidecar itself.
    let own_ports = [
        ADMIN_PORT,
        probes::LIVENESS_PORT,
        probes::READINESS_PORT,
        probes::STARTUP_PORT,
        probes::TCP_PORT,
    ];
    let inbound = merge_ports(
        traffic
            .inbound_port_exclusion_list
            .iter()
            .map(|p| i32::from(*p))
            .chain(own_ports),
        annotation(pod, ann::INBOUND_PORT_EXCLUSIONS),
        ann::INBOUND_PORT_EXCLUSIONS,
    )?;
    let outbound = merge_ports(
        traffic
            .outbound_port_exclusion_list
            .iter()
            .map(|p| i32::from(*p)),
        annotation(pod, ann::OUTBOUND_PORT_EXCLUSIONS),
        ann::OUTBOUND_PORT_EXCLUSIONS,
    )?;
    let mut ranges: Vec<String> = Vec::new();
    let from_pod = annotation(pod, ann::OUTBOUND_IP_RANGE_EXCLUSIONS).unwrap_or_default();
    for cidr in traffic
        .outbound_ip_range_exclusion_list
        .iter()
        .map(String::as_str)
        .chain(split_list(from_pod))
    {
        parse_cidr(cidr).map_err(|e| format!("{}: {e}", ann::OUTBOUND_IP_RANGE_EXCLUSIONS))?;
        if !ranges.iter().any(|r| r == cidr) {
            ranges.push(cidr.into());
        }
    }
    let mut args = vec![
        "init".to_string(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
    ];
    for (flag, list) in [
        ("--inbound-port-exclusions", join(&inbound)),
        ("--outbound-port-exclusions", join(&outbound)),
        ("--outbound-ip-range-exclusions", ranges.join(",")),
    ] {
        if !list.is_empty() {
            args.push(flag.into());
            args.push(list);
        }
    }
    Ok(Container {
        name: ann::INIT_CONTAINER.into(),
        image: Some(settings.proxy_image.clone()),
        command: Some(vec!["mesh-proxy".into()]),
        args: Some(args),
        resources: Some(resources(
            &[("cpu", "10m"), ("memory", "16Mi")],
            &[("memory", "64Mi")],
        )),
        security_context: Some(SecurityContext {
            // iptables needs root and these two capabilities; nothing else. This is the one
            // part of the pod that Pod Security `baseline` and `restricted` refuse (see the
            // README): NET_ADMIN and NET_RAW are outside baseline's allowed capabilities, and
            // restricted also wants a non-root user. The root filesystem stays writable:
            // iptables takes its lock under /run.
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

fn merge_ports(
    base: impl Iterator<Item = i32>,
    extra: Option<&str>,
    name: &str,
) -> Result<Vec<i32>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let from_pod = split_list(extra.unwrap_or_default()).map(|p| match p.parse::<i32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ => Err(format!(
            "pod annotation {name}: {p:?} is not a port in 1..65535"
        )),
    });
    for port in base.map(Ok).chain(from_pod) {
        let port = port?;
        if seen.insert(port) {
            out.push(port);
        }
    }
    Ok(out)
}

fn join(ports: &[i32]) -> String {
    ports
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks `addr/prefix` with the same rules as the MeshConfig's list.
pub fn parse_cidr(cidr: &str) -> Result<(), String> {
    mesh_config::parse_cidr(cidr).map(|_| ())
}

fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
    let map = |kv: &[(&str, &str)]| {
        Some(
            kv.iter()
                .map(|(k, v)| ((*k).to_string(), Quantity((*v).to_string())))
                .collect(),
        )
    };
    ResourceRequirements {
        requests: map(requests),
        limits: map(limits),
        ..Default::default()
    }
}

/// Checks a Kubernetes quantity (`100m`, `64Mi`, `1.5`, `2e3`) so a typo is a clear denial
/// instead of a pod the API server rejects with a less helpful message.
fn valid_quantity(q: &str) -> bool {
    const SUFFIXES: [&str; 15] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
    ];
    let number = SUFFIXES.iter().find_map(|s| q.strip_suffix(s)).unwrap_or(q);
    let number = number.split_once(['e', 'E']).map_or(number, |(m, e)| {
        if e.trim_start_matches(['+', '-'])
            .chars()
            .all(|c| c.is_ascii_digit())
            && !e.is_empty()
        {
            m
        } else {
            "x"
        }
    });
    let digits = number.trim_start_matches(['+', '-']);
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.matches('.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit())
}

fn proxy_resources(pod: &Pod) -> Result<ResourceRequirements, String> {
    let mut r = resources(
        &[("cpu", "50m"), ("memory", "32Mi")],
        &[("memory", "256Mi")],
    );
    for (key, is_limit, resource) in [
        (ann::PROXY_CPU, false, "cpu"),
        (ann::PROXY_MEMORY, false, "memory"),
        (ann::PROXY_CPU_LIMIT, true, "cpu"),
        (ann::PROXY_MEMORY_LIMIT, true, "memory"),
    ] {
        if let Some(v) = annotation(pod, key) {
            if !valid_quantity(v) {
                return Err(format!(
                    "pod annotation {key}: {v:?} is not a Kubernetes quantity (e.g. 100m, 64Mi)"
                ));
            }
            let map = if is_limit {
                &mut r.limits
            } else {
                &mut r.requests
            };
            map.get_or_insert_with(Default::default)
                .insert(resource.into(), Quantity(v.into()));
        }
    }
    Ok(r)
}

/// The service name spans are reported under: the `app` label, the recommended
/// `app.kubernetes.io/name`, else the owner (a ReplicaSet's name without its pod-template hash).
pub fn service_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let labels = meta.labels.as_ref();
    if let Some(app) = labels.and_then(|l| l.get("app").or_else(|| l.get("app.kubernetes.io/name")))
    {
        return app.clone();
    }
    if let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        let hash = labels.and_then(|l| l.get("pod-template-hash"));
        if let Some(base) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            return base.into();
        }
        return owner.name.clone();
    }
    if let Some(g) = &meta.generate_name {
        let g = g.trim_end_matches('-');
        if !g.is_empty() {
            return g.into();
        }
    }
    meta.name.clone().unwrap_or_else(|| "unknown".into())
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn sidecar_container(
    pod: &Pod,
    settings: &Settings,
    mode: SidecarMode,
    rewrite: &probes::Rewrite,
) -> Result<Container, String> {
    let mut envs = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
        // Every address of a dual-stack pod, so the sidecar knows the pod's IPv6 address too
        // (its loop guard and the forward proxy's "is this the pod itself" check).
        field_env("POD_IPS", "status.podIPs"),
        env("SERVICE_NAME", &service_name(pod)),
        env("MESH_CONFIG", &settings.config_url),
    ];
    let mut mounts = vec![VolumeMount {
        name: TMP_VOLUME.into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    if settings.config_ca_pem.is_some() {
        envs.push(env("MESH_CONFIG_CA", &format!("{CA_DIR}/ca.crt")));
        mounts.push(VolumeMount {
            name: CA_VOLUME.into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if !rewrite.originals.is_empty() {
        envs.push(env(
            "MESH_APP_PROBES",
            &to_value(&rewrite.originals)?.to_string(),
        ));
    }
    let mut ports = vec![
        port("mesh-outbound", OUTBOUND_PORT),
        port("mesh-inbound", INBOUND_PORT),
        port("mesh-admin", ADMIN_PORT),
    ];
    for (name, number) in [
        ("mesh-liveness", probes::LIVENESS_PORT),
        ("mesh-readiness", probes::READINESS_PORT),
        ("mesh-startup", probes::STARTUP_PORT),
        ("mesh-tcp-probe", probes::TCP_PORT),
    ] {
        if rewrite
            .replacements
            .iter()
            .any(|r| r.probe.http_get.as_ref().map(|h| &h.port) == Some(&IntOrString::Int(number)))
        {
            ports.push(port(name, number));
        }
    }
    Ok(Container {
        name: ann::SIDECAR_CONTAINER.into(),
        image: Some(settings.proxy_image.clone()),
        command: Some(vec!["mesh-proxy".into()]),
        args: Some(vec!["run".into()]),
        ports: Some(ports),
        env: Some(envs),
        resources: Some(proxy_resources(pod)?),
        readiness_probe: Some(admin_probe("/ready", 2, 3)),
        liveness_probe: Some(admin_probe("/live", 10, 3)),
        // Native sidecars: the app containers start only once this passes, so the app never
        // sends traffic into iptables rules with no proxy behind them.
        startup_probe: (mode == SidecarMode::Native).then(|| admin_probe("/ready", 1, 120)),
        restart_policy: (mode == SidecarMode::Native).then(|| "Always".into()),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The container runtime's default seccomp filter: what Pod Security `restricted` requires,
/// and nothing the proxy or iptables needs is outside it.
fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn enrolled() -> NamespaceInfo {
        NamespaceInfo {
            labels: [(ann::MONITORED_BY.to_string(), "tracemesh".to_string())].into(),
            annotations: BTreeMap::new(),
        }
    }

    fn plain() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop"},
               "spec": {"containers": [{"name": "web", "image": "nginx"}]}})
    }

    fn apply(original: &Value, d: &Decision) -> Value {
        let Decision::Inject(ops) = d else {
            panic!("expected injection, got {d:?}")
        };
        let mut doc = original.clone();
        json_patch::patch(&mut doc, ops).expect("patch applies");
        doc
    }

    fn run(v: &Value, ns: Option<&NamespaceInfo>, namespace: &str) -> Decision {
        decide(
            &pod(v.clone()),
            namespace,
            ns,
            &MeshConfig::default(),
            &Settings::new("tracemesh"),
        )
    }

    #[test]
    fn bare_pod_gets_whole_arrays_and_maps() {
        let v = plain();
        let patched = apply(&v, &run(&v, Some(&enrolled()), "shop"));
        let inits = patched["spec"]["initContainers"].as_array().expect("inits");
        assert_eq!(inits[0]["name"], "mesh-init");
        assert_eq!(inits[1]["name"], "mesh-proxy");
        assert_eq!(inits[1]["restartPolicy"], "Always");
        assert_eq!(inits[1]["securityContext"]["runAsUser"], 1500);
        assert_eq!(patched["spec"]["volumes"][0]["name"], TMP_VOLUME);
        assert_eq!(patched["metadata"]["labels"][ann::MESH_LABEL], "tracemesh");
        assert!(patched["metadata"]["annotations"][ann::SIDECAR_STATUS].is_string());
    }

    #[test]
    fn existing_lists_are_appended_and_keys_escaped() {
        let mut v = plain();
        v["metadata"]["annotations"] = json!({"a": "b"});
        v["metadata"]["labels"] = json!({"app": "shop"});
        v["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
        v["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
        let d = run(&v, Some(&enrolled()), "shop");
        let Decision::Inject(ops) = &d else {
            panic!("{d:?}")
        };
        let paths: Vec<String> = ops.iter().map(|o| o.path().to_string()).collect();
        assert!(
            paths.contains(&"/metadata/annotations/tracemesh.dev~1sidecar-status".to_string()),
            "{paths:?}"
        );
        let patched = apply(&v, &d);
        let names: Vec<&str> = patched["spec"]["initContainers"]
            .as_array()
            .expect("inits")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["mesh-init", "mesh-proxy", "migrate"]);
        assert_eq!(patched["spec"]["volumes"].as_array().map(Vec::len), Some(2));
        assert_eq!(patched["metadata"]["annotations"]["a"], "b");
    }

    #[test]
    fn container_mode_puts_the_sidecar_first_and_probes_follow_their_container() {
        let mut v = plain();
        v["metadata"]["annotations"] = json!({ann::SIDECAR_MODE: "container"});
        v["spec"]["containers"] = json!([
            {"name": "a", "image": "a"},
            {"name": "b", "image": "b", "livenessProbe": {"httpGet": {"path": "/h", "port": 8080}}}
        ]);
        let patched = apply(&v, &run(&v, Some(&enrolled()), "shop"));
        let cs = patched["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(cs[0]["name"], "mesh-proxy");
        assert!(cs[0].get("restartPolicy").is_none());
        assert_eq!(cs[2]["name"], "b");
        assert_eq!(
            cs[2]["livenessProbe"]["httpGet"]["port"],
            probes::LIVENESS_PORT
        );
        assert_eq!(
            patched["spec"]["initContainers"].as_array().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn rules_for_skipping() {
        let v = plain();
        assert_eq!(
            run(&v, None, "shop"),
            Decision::Skip(Skip::NamespaceNotEnrolled)
        );
        assert!(matches!(
            run(&v, Some(&enrolled()), "kube-system"),
            Decision::Skip(Skip::IgnoredNamespace(_))
        ));
        let mut other = enrolled();
        other
            .labels
            .insert(ann::MONITORED_BY.into(), "other-mesh".into());
        assert_eq!(
            run(&v, Some(&other), "shop"),
            Decision::Skip(Skip::NamespaceNotEnrolled)
        );
        let mut disabled = enrolled();
        disabled
            .annotations
            .insert(ann::SIDECAR_INJECTION.into(), "disabled".into());
        assert_eq!(
            run(&v, Some(&disabled), "shop"),
            Decision::Skip(Skip::NamespaceInjectionDisabled)
        );

        let mut host = plain();
        host["spec"]["hostNetwork"] = json!(true);
        assert_eq!(
            run(&host, Some(&enrolled()), "shop"),
            Decision::Skip(Skip::HostNetwork)
        );

        let mut out = plain();
        out["metadata"]["annotations"] = json!({ann::SIDECAR_INJECTION: "disabled"});
        assert_eq!(
            run(&out, Some(&enrolled()), "shop"),
            Decision::Skip(Skip::PodOptOut)
        );

        let mut twice = plain();
        twice["spec"]["initContainers"] = json!([{"name": "mesh-proxy", "image": "p"}]);
        assert_eq!(
            run(&twice, Some(&enrolled()), "shop"),
            Decision::Skip(Skip::AlreadyInjected)
        );

        // A container of the pod's own named like the init container: two of one name would be
        // refused by the API server, so the webhook says why.
        for field in ["initContainers", "containers"] {
            let mut clash = plain();
            let mut own = vec![json!({"name": "mesh-init", "image": "mine"})];
            if field == "containers" {
                own.push(json!({"name": "app", "image": "a"}));
            }
            clash["spec"][field] = json!(own);
            match run(&clash, Some(&enrolled()), "shop") {
                Decision::Deny(why) => assert!(why.contains("named mesh-init"), "{why}"),
                other => panic!("{field}: {other:?}"),
            }
            // Opted out, the pod is left alone and created as it is.
            clash["metadata"]["annotations"] = json!({ann::SIDECAR_INJECTION: "disabled"});
            assert_eq!(
                run(&clash, Some(&enrolled()), "shop"),
                Decision::Skip(Skip::PodOptOut)
            );
        }
    }

    #[test]
    fn opt_in_works_without_enrolment_and_bad_values_are_denied() {
        let mut v = plain();
        v["metadata"]["annotations"] = json!({ann::SIDECAR_INJECTION: "enabled"});
        assert!(matches!(run(&v, None, "default"), Decision::Inject(_)));
        v["metadata"]["annotations"] = json!({ann::SIDECAR_INJECTION: "maybe"});
        let Decision::Deny(msg) = run(&v, Some(&enrolled()), "shop") else {
            panic!("deny")
        };
        assert!(
            msg.contains("\"maybe\"") && msg.contains("enabled"),
            "{msg}"
        );
        v["metadata"]["annotations"] = json!({ann::PROXY_MEMORY: "lots"});
        assert!(matches!(
            run(&v, Some(&enrolled()), "shop"),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn exclusions_merge_config_and_annotations() {
        let mut config = MeshConfig::default();
        config.spec.traffic.outbound_port_exclusion_list = vec![3306];
        config.spec.traffic.outbound_ip_range_exclusion_list = vec!["10.0.0.0/8".into()];
        let mut v = plain();
        v["metadata"]["annotations"] = json!({
            ann::OUTBOUND_PORT_EXCLUSIONS: "6379, 3306",
            ann::INBOUND_PORT_EXCLUSIONS: "9090",
            ann::OUTBOUND_IP_RANGE_EXCLUSIONS: "169.254.169.254/32",
        });
        let d = decide(
            &pod(v.clone()),
            "shop",
            Some(&enrolled()),
            &config,
            &Settings::new("tracemesh"),
        );
        let patched = apply(&v, &d);
        let args: Vec<&str> = patched["spec"]["initContainers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let after = |flag: &str| {
            args.iter()
                .position(|a| *a == flag)
                .and_then(|i| args.get(i + 1))
                .copied()
        };
        assert_eq!(after("--outbound-port-exclusions"), Some("3306,6379"));
        assert_eq!(
            after("--inbound-port-exclusions"),
            Some("15000,15901,15902,15903,15904,9090")
        );
        assert_eq!(
            after("--outbound-ip-range-exclusions"),
            Some("10.0.0.0/8,169.254.169.254/32")
        );

        v["metadata"]["annotations"] = json!({ann::OUTBOUND_PORT_EXCLUSIONS: "70000"});
        assert!(matches!(
            run(&v, Some(&enrolled()), "shop"),
            Decision::Deny(_)
        ));
        v["metadata"]["annotations"] = json!({ann::OUTBOUND_IP_RANGE_EXCLUSIONS: "10.0.0.0/40"});
        assert!(matches!(
            run(&v, Some(&enrolled()), "shop"),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn service_name_sources() {
        let mut v = plain();
        assert_eq!(service_name(&pod(v.clone())), "web");
        v["metadata"] = json!({"generateName": "api-7d4b9-", "labels": {"pod-template-hash": "7d4b9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d4b9", "uid": "u", "controller": true}]});
        assert_eq!(service_name(&pod(v.clone())), "api");
        v["metadata"]["labels"] = json!({"app": "checkout"});
        assert_eq!(service_name(&pod(v)), "checkout");
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "64Mi", "1", "0.5", "2e3", "1Gi"] {
            assert!(valid_quantity(ok), "{ok}");
        }
        for bad in ["", "lots", "1.2.3", "Mi", "10 Mi"] {
            assert!(!valid_quantity(bad), "{bad}");
        }
    }

    /// The container-level checks of the Pod Security Standards (baseline and restricted),
    /// as the admission plugin applies them to one container's securityContext.
    fn pss_violations(c: &Value, level: &str) -> Vec<String> {
        // Baseline's allowed added capabilities (Kubernetes Pod Security Standards).
        const BASELINE_CAPS: [&str; 13] = [
            "AUDIT_WRITE",
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "FSETID",
            "KILL",
            "MKNOD",
            "NET_BIND_SERVICE",
            "SETFCAP",
            "SETGID",
            "SETPCAP",
            "SETUID",
            "SYS_CHROOT",
        ];
        let sc = &c["securityContext"];
        let mut out = Vec::new();
        let added: Vec<&str> = sc["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if sc["privileged"] == true {
            out.push("privileged".to_string());
        }
        for cap in &added {
            let allowed = match level {
                "restricted" => *cap == "NET_BIND_SERVICE",
                _ => BASELINE_CAPS.contains(cap),
            };
            if !allowed {
                out.push(format!("capability {cap}"));
            }
        }
        if matches!(sc["seccompProfile"]["type"].as_str(), Some("Unconfined")) {
            out.push("seccomp Unconfined".into());
        }
        if level == "restricted" {
            if sc["allowPrivilegeEscalation"] != false {
                out.push("allowPrivilegeEscalation".into());
            }
            if sc["runAsNonRoot"] != true {
                out.push("runAsNonRoot".into());
            }
            if sc["runAsUser"] == 0 {
                out.push("runAsUser 0".into());
            }
            if !matches!(
                sc["seccompProfile"]["type"].as_str(),
                Some("RuntimeDefault" | "Localhost")
            ) {
                out.push("seccompProfile".into());
            }
            let drops_all = sc["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|v| v == "ALL"));
            if !drops_all {
                out.push("capabilities drop ALL".into());
            }
        }
        out
    }

    /// The injected containers against Pod Security: the sidecar meets `restricted`; the init
    /// container fails `baseline` and `restricted` for exactly its iptables needs, which is what
    /// `mesh namespace add` warns about. Both modes, since the sidecar moves between lists.
    #[test]
    fn injected_containers_against_pod_security() {
        for mode in ["native", "container"] {
            let mut v = plain();
            v["metadata"]["annotations"] = json!({ann::SIDECAR_MODE: mode});
            let patched = apply(&v, &run(&v, Some(&enrolled()), "shop"));
            let all: Vec<&Value> = patched["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .chain(patched["spec"]["containers"].as_array())
                .flatten()
                .collect();
            let find = |name: &str| {
                *all.iter()
                    .find(|c| c["name"] == name)
                    .unwrap_or_else(|| panic!("{name} in {mode} mode"))
            };
            let (init, proxy) = (find(ann::INIT_CONTAINER), find(ann::SIDECAR_CONTAINER));
            let table: [(&Value, &str, &[&str]); 6] = [
                (proxy, "privileged", &[]),
                (proxy, "baseline", &[]),
                (proxy, "restricted", &[]),
                (init, "privileged", &[]),
                (
                    init,
                    "baseline",
                    &["capability NET_ADMIN", "capability NET_RAW"],
                ),
                (
                    init,
                    "restricted",
                    &[
                        "capability NET_ADMIN",
                        "capability NET_RAW",
                        "runAsNonRoot",
                        "runAsUser 0",
                    ],
                ),
            ];
            for (c, level, expected) in table {
                let violations = if level == "privileged" {
                    Vec::new()
                } else {
                    pss_violations(c, level)
                };
                assert_eq!(violations, expected, "{} at {level} ({mode})", c["name"]);
            }
            // The fields themselves, as the README states them.
            for c in [init, proxy] {
                let sc = &c["securityContext"];
                assert_eq!(sc["seccompProfile"], json!({"type": "RuntimeDefault"}));
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
                assert_eq!(sc["allowPrivilegeEscalation"], false);
            }
            assert_eq!(
                init["securityContext"]["capabilities"]["add"],
                json!(["NET_ADMIN", "NET_RAW"])
            );
            let sc = &proxy["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["runAsNonRoot"], true);
            assert_eq!(sc["runAsUser"], PROXY_UID);
            assert!(sc["capabilities"].get("add").is_none());
        }
    }
}
