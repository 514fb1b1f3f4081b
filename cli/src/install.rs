//! `mesh install`: the whole control plane as one multi-document YAML stream for
//! `kubectl apply -f -`.
//!
//! The output is a pure function of the flags: the injector makes its webhook certificates in
//! the cluster, so nothing random or time-dependent is printed, the same flags give the same
//! bytes, and re-applying the stream of a running mesh changes nothing. Objects the flags leave
//! alone are printed exactly as `manifests/` has them (comments included), which is also what
//! `kubectl kustomize manifests` renders.
//!
//! The MeshConfig carries only what the flags set. `kubectl apply` re-asserts every field it
//! applied, so a field the stream never names stays whatever `mesh config patch` made it.

use crate::manifests::{self, Manifests};
use crate::namespace::{parse_mesh_name, DEFAULT_MESH_NAME, MONITORED_BY_LABEL};
use anyhow::Context as _;
use serde_yaml::Value;
use std::io::Write;

/// Where release images are published; `--registry` points at a mirror or a private build.
pub const DEFAULT_REGISTRY: &str = mesh_config::images::REGISTRY;
/// The injector's Deployment, the one object the image, replica and resource flags change.
const INJECTOR_DEPLOYMENT: &str = "mesh-injector";
const INJECTOR_IMAGE: &str = mesh_config::images::INJECTOR;
const PROXY_IMAGE: &str = mesh_config::images::PROXY;
/// The sidecar mode the injector uses when its `--sidecar-mode` is not given.
const DEFAULT_SIDECAR_MODE: SidecarMode = SidecarMode::Native;

/// The image tag of this release: images are tagged `v<crate version>`.
pub fn default_tag() -> String {
    mesh_config::images::release_tag()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// An init container with restartPolicy: Always (Kubernetes 1.29 and later)
    Native,
    /// A regular container placed first, for older clusters
    Container,
}

impl SidecarMode {
    fn as_str(self) -> &'static str {
        match self {
            SidecarMode::Native => "native",
            SidecarMode::Container => "container",
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  # Install the mesh
  mesh install | kubectl apply -f -

  # Install from a private registry, with tracing to a Zipkin in the cluster
  mesh install --registry registry.example.com/tracemesh --tag v0.1.0 \\
    --enable-tracing --tracing-address zipkin.tracing.svc.cluster.local | kubectl apply -f -

  # Upgrade: the same command with the new release's binary; re-applying changes nothing else
  mesh install | kubectl apply -f -

On a cluster that has never had the MeshConfig CRD, apply the CRD first (kubectl resolves every
kind in a stream before it applies the first object):
  mesh install --crds | kubectl apply -f - && \\
    kubectl wait --for condition=established crd/meshconfigs.config.tracemesh.dev && \\
    mesh install | kubectl apply -f -")]
pub struct Args {
    /// Name of the mesh (the value of the tracemesh.dev/monitored-by label it watches)
    #[arg(long, default_value = DEFAULT_MESH_NAME, value_parser = parse_mesh_name)]
    pub mesh_name: String,
    /// Print only the CustomResourceDefinitions
    #[arg(long)]
    pub crds: bool,
    /// Registry (and path) of the mesh-injector and mesh-proxy images
    #[arg(long, value_name = "REGISTRY", default_value = DEFAULT_REGISTRY, value_parser = parse_registry)]
    pub registry: String,
    /// Tag of the mesh-injector and mesh-proxy images [default: this release, v<version>]
    #[arg(long, value_name = "TAG", value_parser = parse_tag)]
    pub tag: Option<String>,
    /// Injector replicas [default: the manifest's, 2]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub replicas: Option<u16>,
    /// Injector CPU request, a Kubernetes quantity such as 50m
    #[arg(long, value_name = "QUANTITY", value_parser = parse_quantity)]
    pub injector_cpu_request: Option<String>,
    /// Injector CPU limit (none by default: a throttled webhook times out pod creation)
    #[arg(long, value_name = "QUANTITY", value_parser = parse_quantity)]
    pub injector_cpu_limit: Option<String>,
    /// Injector memory request, e.g. 32Mi
    #[arg(long, value_name = "QUANTITY", value_parser = parse_quantity)]
    pub injector_memory_request: Option<String>,
    /// Injector memory limit, e.g. 128Mi
    #[arg(long, value_name = "QUANTITY", value_parser = parse_quantity)]
    pub injector_memory_limit: Option<String>,
    /// How the sidecar is injected [default: native]
    #[arg(long, value_enum, value_name = "MODE")]
    pub sidecar_mode: Option<SidecarMode>,
    /// Turn span export on in the MeshConfig
    #[arg(long)]
    pub enable_tracing: bool,
    /// Collector host name or IP, no scheme
    #[arg(long, value_name = "HOST")]
    pub tracing_address: Option<String>,
    /// Collector port
    #[arg(long, value_name = "PORT")]
    pub tracing_port: Option<u16>,
    /// Collector HTTP path, e.g. /api/v2/spans
    #[arg(long, value_name = "PATH")]
    pub tracing_endpoint: Option<String>,
}

impl Args {
    fn tag(&self) -> String {
        self.tag.clone().unwrap_or_else(default_tag)
    }
}

pub fn run(args: &Args, out: &mut impl Write) -> anyhow::Result<()> {
    if args.replicas == Some(1) {
        eprintln!(
            "warning: with one injector replica, pod creation in enrolled namespaces fails while \
             it restarts (the webhook's failurePolicy is Fail), and its PodDisruptionBudget \
             blocks node drains"
        );
    }
    out.write_all(render(&manifests::EMBEDDED, args)?.as_bytes())?;
    Ok(())
}

pub fn render(manifests: &Manifests, args: &Args) -> anyhow::Result<String> {
    let mut rendered = Vec::new();
    for object in manifests::objects(manifests)? {
        if args.crds && object.kind() != "CustomResourceDefinition" {
            continue;
        }
        let mut value = object.value.clone();
        if args.mesh_name != DEFAULT_MESH_NAME {
            rename_mesh(&mut value, &args.mesh_name);
        }
        match object.kind() {
            "Deployment" if object.name() == INJECTOR_DEPLOYMENT => {
                shape_injector(&mut value, args)
            }
            "MeshConfig" => with_tracing_flags(&mut value, args)?,
            _ => {}
        }
        rendered.push(if value == object.value {
            object.text
        } else {
            serde_yaml::to_string(&value)
                .with_context(|| format!("{} {}", object.kind(), object.name()))?
        });
    }
    Ok(manifests::stream(rendered.iter().map(String::as_str)))
}

/// The image, replica, resource and sidecar-mode flags, on the injector's Deployment.
fn shape_injector(deployment: &mut Value, args: &Args) {
    let tag = args.tag();
    if let Some(replicas) = args.replicas {
        deployment["spec"]["replicas"] = Value::from(replicas);
    }
    let Some(containers) = deployment["spec"]["template"]["spec"]["containers"].as_sequence_mut()
    else {
        return;
    };
    for container in containers {
        let is_injector = container["image"]
            .as_str()
            .is_some_and(|image| image_name(image) == INJECTOR_IMAGE);
        if !is_injector {
            continue;
        }
        let reference = mesh_config::images::reference;
        container["image"] = Value::from(reference(&args.registry, INJECTOR_IMAGE, &tag));
        let proxy_image = reference(&args.registry, PROXY_IMAGE, &tag);
        let default_proxy_image = reference(DEFAULT_REGISTRY, PROXY_IMAGE, &default_tag());
        set_arg(
            container,
            "--proxy-image",
            &proxy_image,
            &default_proxy_image,
        );
        let mode = args.sidecar_mode.unwrap_or(DEFAULT_SIDECAR_MODE).as_str();
        set_arg(
            container,
            "--sidecar-mode",
            mode,
            DEFAULT_SIDECAR_MODE.as_str(),
        );
        let resources = [
            ("requests", "cpu", &args.injector_cpu_request),
            ("limits", "cpu", &args.injector_cpu_limit),
            ("requests", "memory", &args.injector_memory_request),
            ("limits", "memory", &args.injector_memory_limit),
        ];
        for (group, resource, quantity) in resources {
            if let Some(quantity) = quantity {
                if !container["resources"].is_mapping() {
                    container["resources"] = Value::Mapping(Default::default());
                }
                if !container["resources"][group].is_mapping() {
                    container["resources"][group] = Value::Mapping(Default::default());
                }
                container["resources"][group][resource] = Value::from(quantity.as_str());
            }
        }
    }
}

/// The image's name without registry, path, tag or digest: `ghcr.io/tracemesh/mesh-injector:v1`
/// is `mesh-injector`.
fn image_name(image: &str) -> &str {
    let name = image.rsplit('/').next().unwrap_or(image);
    name.split(['@', ':']).next().unwrap_or(name)
}

/// Sets `--flag value` in the container's args: replaces the value where the flag is given
/// (as `--flag value` or `--flag=value`), and appends it only when it differs from the
/// injector's own default, so that default flags leave the manifest as it is.
fn set_arg(container: &mut Value, flag: &str, value: &str, injector_default: &str) {
    if !container["args"].is_sequence() {
        container["args"] = Value::Sequence(Vec::new());
    }
    let Some(args) = container["args"].as_sequence_mut() else {
        return;
    };
    let with_equals = format!("{flag}=");
    for index in 0..args.len() {
        let Some(text) = args[index].as_str() else {
            continue;
        };
        if text == flag && index + 1 < args.len() {
            args[index + 1] = Value::from(value);
            return;
        }
        if text.starts_with(&with_equals) {
            args[index] = Value::from(format!("{flag}={value}"));
            return;
        }
    }
    if value != injector_default {
        args.push(Value::from(flag));
        args.push(Value::from(value));
    }
    if args.is_empty() {
        if let Some(map) = container.as_mapping_mut() {
            map.remove("args");
        }
    }
}

/// The tracing flags merged into the manifest's MeshConfig and checked as a whole; only the
/// fields a flag set are added, so the stream never re-asserts a setting the user did not choose.
fn with_tracing_flags(object: &mut Value, args: &Args) -> anyhow::Result<()> {
    let mut tracing = serde_json::Map::new();
    if args.enable_tracing {
        tracing.insert("enable".into(), true.into());
    }
    if let Some(address) = &args.tracing_address {
        tracing.insert("address".into(), address.as_str().into());
    }
    if let Some(port) = args.tracing_port {
        tracing.insert("port".into(), port.into());
    }
    if let Some(endpoint) = &args.tracing_endpoint {
        tracing.insert("endpoint".into(), endpoint.as_str().into());
    }
    if tracing.is_empty() {
        return Ok(());
    }
    let mut json: serde_json::Value = serde_json::to_value(&*object)?;
    json_patch::merge(
        &mut json,
        &serde_json::json!({"spec": {"observability": {"tracing": tracing}}}),
    );
    mesh_config::parse_strict(&json.to_string()).map_err(|err| {
        anyhow::anyhow!(
            "the tracing flags make an invalid MeshConfig:\n{}",
            crate::backend::problem_lines(&err)
        )
    })?;
    *object = serde_yaml::to_value(&json)?;
    Ok(())
}

/// Points the injector and the webhook's namespace selector at another mesh name. Done on the
/// parsed documents (label values and the injector's `--mesh-name` argument), not on text, so
/// that nothing else that happens to read "tracemesh" changes.
fn rename_mesh(value: &mut Value, mesh: &str) {
    match value {
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                if key.as_str() == Some(MONITORED_BY_LABEL)
                    && item.as_str() == Some(DEFAULT_MESH_NAME)
                {
                    *item = Value::String(mesh.to_string());
                } else {
                    rename_mesh(item, mesh);
                }
            }
            // An env var `MESH_NAME` of the injector's container.
            if map.get("name").and_then(Value::as_str) == Some("MESH_NAME") {
                map.insert(Value::from("value"), Value::from(mesh));
            }
        }
        Value::Sequence(items) => {
            let mut next_is_value = false;
            for item in items.iter_mut() {
                if let Some(text) = item.as_str() {
                    if next_is_value {
                        *item = Value::String(mesh.to_string());
                        next_is_value = false;
                        continue;
                    }
                    if text == "--mesh-name" {
                        next_is_value = true;
                    } else if text.starts_with("--mesh-name=") {
                        *item = Value::String(format!("--mesh-name={mesh}"));
                    }
                } else {
                    rename_mesh(item, mesh);
                }
            }
        }
        _ => {}
    }
}

/// A registry host with an optional path, no scheme, no tag: `registry.example.com:5000/team`.
fn parse_registry(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    let valid = !trimmed.is_empty()
        && !trimmed.contains("://")
        && trimmed.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        });
    if valid {
        Ok(trimmed.to_string())
    } else {
        Err(format!(
            "{text:?} is not a registry: give a host and optional path, no scheme, \
             e.g. registry.example.com/tracemesh"
        ))
    }
}

/// An OCI tag: up to 128 of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`.
fn parse_tag(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 128
        && !text.starts_with(['.', '-'])
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not an image tag: up to 128 letters, digits, '_', '.' and '-', \
             not starting with '.' or '-'"
        ))
    }
}

/// A Kubernetes resource quantity in the forms people write: `100m`, `0.5`, `64Mi`, `1G`, `1e3`.
fn parse_quantity(text: &str) -> Result<String, String> {
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let exponent_ok = suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
        let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    });
    if number_ok && (SUFFIXES.contains(&suffix) || exponent_ok) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a Kubernetes quantity, e.g. 100m or 0.5 (CPU), 64Mi or 1Gi (memory)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The flags as the command line gives them, parsed by clap itself.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(flags: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("install").chain(flags.iter().copied()))
            .expect("flags parse")
            .args
    }

    fn objects(stream: &str) -> Vec<Value> {
        manifests::split_documents(stream)
            .into_iter()
            .map(|doc| serde_yaml::from_str(doc).expect("each document parses"))
            .collect()
    }

    fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }

    fn injector_container(objects: &[Value]) -> &Value {
        &find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    }

    #[test]
    fn default_flags_print_the_manifests_as_written() {
        let stream = render(&manifests::EMBEDDED, &args(&[])).expect("render");
        for object in manifests::objects(&manifests::EMBEDDED).expect("objects") {
            assert!(stream.contains(&object.text), "{} changed", object.kind());
        }
        assert!(!stream.contains("${"), "a placeholder is left");
        assert!(!objects(&stream).iter().any(|o| o["kind"] == "Secret"));
    }

    #[test]
    fn image_replica_resource_and_mode_flags_shape_the_injector() {
        let stream = render(
            &manifests::EMBEDDED,
            &args(&[
                "--registry",
                "registry.example.com:5000/mesh/",
                "--tag",
                "v9.1-rc.1",
                "--replicas",
                "3",
                "--injector-cpu-request",
                "100m",
                "--injector-memory-limit",
                "256Mi",
                "--sidecar-mode",
                "container",
            ]),
        )
        .expect("render");
        let objects = objects(&stream);
        assert_eq!(find(&objects, "Deployment")["spec"]["replicas"], 3);
        let container = injector_container(&objects);
        assert_eq!(
            container["image"],
            "registry.example.com:5000/mesh/mesh-injector:v9.1-rc.1"
        );
        let flags: Vec<&str> = container["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let value_of = |flag: &str| {
            let at = flags.iter().position(|f| *f == flag).expect(flag);
            flags[at + 1]
        };
        assert_eq!(
            value_of("--proxy-image"),
            "registry.example.com:5000/mesh/mesh-proxy:v9.1-rc.1"
        );
        assert_eq!(value_of("--sidecar-mode"), "container");
        assert_eq!(container["resources"]["requests"]["cpu"], "100m");
        assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
        // What no flag named keeps the manifest's value.
        assert_eq!(container["resources"]["requests"]["memory"], "32Mi");
    }

    #[test]
    fn an_arg_already_given_is_replaced_not_repeated() {
        let mut container: Value =
            serde_yaml::from_str("args: [--sidecar-mode=native, --proxy-image, a/b:c]").unwrap();
        set_arg(&mut container, "--sidecar-mode", "container", "native");
        set_arg(&mut container, "--proxy-image", "r/mesh-proxy:t", "x");
        assert_eq!(
            container["args"],
            serde_yaml::from_str::<Value>(
                "[--sidecar-mode=container, --proxy-image, r/mesh-proxy:t]"
            )
            .unwrap()
        );
        let mut bare: Value = serde_yaml::from_str("name: x").unwrap();
        set_arg(&mut bare, "--sidecar-mode", "native", "native");
        assert!(bare.get("args").is_none(), "a default adds nothing");
    }

    #[test]
    fn mesh_name_reaches_the_selector_and_the_injector() {
        let objects =
            objects(&render(&manifests::EMBEDDED, &args(&["--mesh-name", "blue"])).unwrap());
        let text = serde_yaml::to_string(&injector_container(&objects)["args"]).unwrap();
        assert!(text.contains("blue"), "{text}");
        let webhook = find(&objects, "MutatingWebhookConfiguration");
        assert_eq!(
            webhook["webhooks"][0]["namespaceSelector"]["matchLabels"][MONITORED_BY_LABEL],
            "blue"
        );
    }

    #[test]
    fn mesh_config_holds_only_what_the_flags_set_and_is_validated() {
        let plain = objects(&render(&manifests::EMBEDDED, &args(&[])).unwrap());
        let spec = serde_json::to_value(&find(&plain, "MeshConfig")["spec"]).unwrap();
        assert_eq!(
            spec,
            serde_json::json!({"observability": {"tracing": {}}}),
            "default install sets no field"
        );

        let traced = objects(
            &render(
                &manifests::EMBEDDED,
                &args(&["--enable-tracing", "--tracing-address", "zipkin.tracing"]),
            )
            .unwrap(),
        );
        assert_eq!(
            serde_json::to_value(&find(&traced, "MeshConfig")["spec"]).unwrap(),
            serde_json::json!({"observability": {"tracing": {"enable": true, "address": "zipkin.tracing"}}})
        );

        let err = render(
            &manifests::EMBEDDED,
            &args(&["--tracing-endpoint", "no-slash"]),
        )
        .expect_err("invalid endpoint");
        assert!(
            err.to_string()
                .contains("spec.observability.tracing.endpoint"),
            "{err}"
        );
    }

    #[test]
    fn crds_alone() {
        let objects = objects(&render(&manifests::EMBEDDED, &args(&["--crds"])).unwrap());
        assert!(!objects.is_empty());
        assert!(objects
            .iter()
            .all(|o| o["kind"] == "CustomResourceDefinition"));
    }

    #[test]
    fn flag_values_are_checked() {
        for bad in [
            &["--registry", "https://ghcr.io/x"][..],
            &["--registry", "a//b"],
            &["--tag", "-x"],
            &["--tag", "a:b"],
            &["--replicas", "0"],
            &["--injector-cpu-request", "lots"],
            &["--injector-memory-limit", "64MB"],
            &["--mesh-name", "Not A Label"],
            &["--sidecar-mode", "ambient"],
        ] {
            let parsed = Cli::try_parse_from(std::iter::once("install").chain(bad.iter().copied()));
            assert!(parsed.is_err(), "{bad:?} accepted");
        }
        for good in ["100m", "0.5", "2", "64Mi", "1Gi", "1e3", "1.5G"] {
            assert!(parse_quantity(good).is_ok(), "{good}");
        }
    }
}
