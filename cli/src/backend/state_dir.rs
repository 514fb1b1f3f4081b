//! The local backend: the same objects as in Kubernetes, kept as files under the state dir so that
//! `mesh run`, the local injector and sidecars read what the CLI writes.
//!
//! ```text
//! <state-dir>/mesh-config.yaml        the MeshConfig (watched by local sidecars)
//! <state-dir>/namespaces/<name>.yaml  a v1 Namespace with its labels and annotations
//! <state-dir>/.lock                   serialises read-modify-write cycles between processes
//! ```
//!
//! Every write goes to a temporary file that is synced and then renamed over the old one, so a
//! watcher never reads half a document. Read-modify-write cycles hold an exclusive lock on
//! `.lock` (not on the document itself: the rename replaces the document's inode, and a lock on a
//! replaced inode would no longer exclude anyone).

use super::{Backend, BackendError, Patched};
use k8s_openapi::api::core::v1::Namespace;
use mesh_config::MeshConfig;
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::namespace::MONITORED_BY_LABEL;

pub const MESH_CONFIG_FILE: &str = "mesh-config.yaml";
pub const NAMESPACES_DIR: &str = "namespaces";
const LOCK_FILE: &str = ".lock";

pub struct StateDirBackend {
    dir: PathBuf,
}

impl StateDirBackend {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn mesh_config_path(&self) -> PathBuf {
        self.dir.join(MESH_CONFIG_FILE)
    }

    fn namespaces_dir(&self) -> PathBuf {
        self.dir.join(NAMESPACES_DIR)
    }

    fn namespace_path(&self, name: &str) -> Result<PathBuf, BackendError> {
        // The name becomes a file name: only a Kubernetes-valid name can be one safely.
        if !crate::namespace::is_dns1123_label(name) {
            return Err(BackendError::Corrupt {
                path: self.namespaces_dir(),
                message: format!("\"{name}\" is not a valid namespace name"),
            });
        }
        Ok(self.namespaces_dir().join(format!("{name}.yaml")))
    }

    /// Holds the state dir's exclusive lock until the guard is dropped.
    fn lock(&self) -> Result<File, BackendError> {
        create_dir(&self.dir)?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| BackendError::Io {
                path: path.clone(),
                source,
            })?;
        file.lock()
            .map_err(|source| BackendError::Io { path, source })?;
        Ok(file)
    }

    pub fn read_namespace(&self, name: &str) -> Result<Option<Namespace>, BackendError> {
        let path = self.namespace_path(name)?;
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        let namespace: Namespace =
            serde_yaml::from_str(&text).map_err(|err| BackendError::Corrupt {
                path: path.clone(),
                message: err.to_string(),
            })?;
        Ok(Some(namespace))
    }

    pub fn list_namespaces(&self) -> Result<Vec<Namespace>, BackendError> {
        let dir = self.namespaces_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(BackendError::Io { path: dir, source }),
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry
                    .file_name()
                    .to_str()?
                    .strip_suffix(".yaml")?
                    .to_string();
                crate::namespace::is_dns1123_label(&name).then_some(name)
            })
            .collect();
        names.sort();
        let mut namespaces = Vec::with_capacity(names.len());
        for name in names {
            if let Some(namespace) = self.read_namespace(&name)? {
                namespaces.push(namespace);
            }
        }
        Ok(namespaces)
    }

    pub fn patch_namespace_blocking(&self, name: &str, patch: &Value) -> Result<(), BackendError> {
        let path = self.namespace_path(name)?;
        let _lock = self.lock()?;
        let mut object = match self.read_namespace(name)? {
            Some(namespace) => {
                serde_json::to_value(namespace).map_err(|err| corrupt(&path, err))?
            }
            None => serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
            }),
        };
        json_patch::merge(&mut object, patch);
        let namespace: Namespace =
            serde_json::from_value(object).map_err(|err| corrupt(&path, err))?;
        let text = serde_yaml::to_string(&namespace).map_err(|err| corrupt(&path, err))?;
        create_dir(&self.namespaces_dir())?;
        write_atomic(&path, text.as_bytes())
    }

    /// The stored MeshConfig, or the defaults when none was written yet (every field has one).
    pub fn read_mesh_config(&self) -> Result<MeshConfig, BackendError> {
        let path = self.mesh_config_path();
        match read_optional(&path)? {
            None => Ok(MeshConfig::default()),
            Some(text) => {
                let parsed = mesh_config::parse(&text).map_err(BackendError::StoredMeshConfig)?;
                for warning in &parsed.warnings {
                    eprintln!("warning: {}: {warning}", path.display());
                }
                Ok(parsed.config)
            }
        }
    }

    /// Read, merge, validate and replace under the lock, so concurrent patches from several
    /// processes each see the previous one's result and no update is lost.
    pub fn patch_mesh_config_blocking(&self, patch: &Value) -> Result<MeshConfig, BackendError> {
        self.update_mesh_config(|_| patch.clone())
    }

    /// The read-modify-write cycle itself: `make_patch` sees the document as it is under the
    /// lock, so a patch computed from it (appending to a list) cannot be based on a stale copy.
    pub fn update_mesh_config(
        &self,
        make_patch: impl FnOnce(&MeshConfig) -> Value,
    ) -> Result<MeshConfig, BackendError> {
        self.update(make_patch, WriteWhen::Always)
            .map(|patched| patched.config)
    }

    fn update(
        &self,
        make_patch: impl FnOnce(&MeshConfig) -> Value,
        write: WriteWhen,
    ) -> Result<Patched, BackendError> {
        let _lock = self.lock()?;
        let current = self.read_mesh_config()?;
        let patch = make_patch(&current);
        let merged =
            mesh_config::merge_patch(&current, &patch).map_err(BackendError::InvalidPatch)?;
        let path = self.mesh_config_path();
        // A missing file reads as the defaults but is not stored: it must be written, since
        // local sidecars watch the file.
        if write == WriteWhen::IfChanged && merged == current && path.exists() {
            return Ok(Patched {
                config: merged,
                changed: false,
            });
        }
        // `to_yaml` quotes what YAML 1.1 tools would misread, so the file can go to kubectl.
        let text = merged.to_yaml();
        write_atomic(&path, text.as_bytes())?;
        Ok(Patched {
            config: merged,
            changed: true,
        })
    }
}

impl Backend for StateDirBackend {
    fn creates_namespaces(&self) -> bool {
        true
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>, BackendError> {
        self.read_namespace(name)
    }

    async fn list_enrolled(&self, mesh: Option<&str>) -> Result<Vec<Namespace>, BackendError> {
        let mut namespaces = self.list_namespaces()?;
        namespaces.retain(|namespace| {
            let label = namespace
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(MONITORED_BY_LABEL));
            match (label, mesh) {
                (Some(value), Some(mesh)) => value == mesh,
                (Some(_), None) => true,
                (None, _) => false,
            }
        });
        Ok(namespaces)
    }

    async fn patch_namespace(&self, name: &str, patch: &Value) -> Result<(), BackendError> {
        self.patch_namespace_blocking(name, patch)
    }

    async fn get_mesh_config(&self) -> Result<MeshConfig, BackendError> {
        self.read_mesh_config()
    }

    async fn patch_mesh_config(&self, patch: &Value) -> Result<Patched, BackendError> {
        self.update(|_| patch.clone(), WriteWhen::IfChanged)
    }
}

/// Whether a patch that changes nothing still rewrites the file (to create it, for the local
/// mesh's sidecars) or leaves it alone (a user's no-op patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteWhen {
    Always,
    IfChanged,
}

fn corrupt(path: &Path, err: impl std::fmt::Display) -> BackendError {
    BackendError::Corrupt {
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}

fn create_dir(dir: &Path) -> Result<(), BackendError> {
    fs::create_dir_all(dir).map_err(|source| BackendError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, BackendError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BackendError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write to a sibling temporary file, sync it, rename it over `path`, then sync the directory so
/// the rename itself survives a crash. Readers see the old document or the new one, never a mix.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), BackendError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io = |source| BackendError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("document");
    let temp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespace_is_created_on_first_patch_as_a_v1_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = StateDirBackend::new(dir.path());
        assert!(backend.read_namespace("shop").expect("read").is_none());
        backend
            .patch_namespace_blocking(
                "shop",
                &json!({"metadata": {"labels": {MONITORED_BY_LABEL: "tracemesh"}}}),
            )
            .expect("patch");
        let text = fs::read_to_string(dir.path().join("namespaces/shop.yaml")).expect("file");
        let value: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        assert_eq!(value["apiVersion"], "v1");
        assert_eq!(value["kind"], "Namespace");
        assert_eq!(value["metadata"]["name"], "shop");
        assert_eq!(value["metadata"]["labels"][MONITORED_BY_LABEL], "tracemesh");
    }

    #[test]
    fn null_in_a_patch_removes_the_label() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = StateDirBackend::new(dir.path());
        let add = json!({"metadata": {"labels": {MONITORED_BY_LABEL: "m", "team": "a"}}});
        backend.patch_namespace_blocking("shop", &add).expect("add");
        let remove = json!({"metadata": {"labels": {MONITORED_BY_LABEL: null}}});
        backend
            .patch_namespace_blocking("shop", &remove)
            .expect("remove");
        let namespace = backend
            .read_namespace("shop")
            .expect("read")
            .expect("exists");
        let labels = namespace.metadata.labels.expect("labels");
        assert!(!labels.contains_key(MONITORED_BY_LABEL));
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    }

    #[test]
    fn a_name_that_is_not_a_label_never_becomes_a_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = StateDirBackend::new(dir.path());
        assert!(backend
            .patch_namespace_blocking("../escape", &json!({}))
            .is_err());
        assert!(!dir.path().join("escape.yaml").exists());
    }

    #[test]
    fn missing_mesh_config_reads_as_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = StateDirBackend::new(dir.path());
        assert_eq!(
            backend.read_mesh_config().expect("read"),
            MeshConfig::default()
        );
    }

    #[test]
    fn invalid_patch_leaves_the_file_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = StateDirBackend::new(dir.path());
        backend
            .patch_mesh_config_blocking(&json!({"spec": {"sidecar": {"logLevel": "debug"}}}))
            .expect("valid");
        let before = fs::read(backend.mesh_config_path()).expect("file");
        let err = backend
            .patch_mesh_config_blocking(
                &json!({"spec": {"observability": {"tracing": {"port": 0}}}}),
            )
            .expect_err("invalid");
        assert!(
            err.to_string().contains("spec.observability.tracing.port"),
            "{err}"
        );
        assert_eq!(fs::read(backend.mesh_config_path()).expect("file"), before);
    }

    #[test]
    fn atomic_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("doc.yaml");
        write_atomic(&path, b"a much longer first version\n").expect("first");
        write_atomic(&path, b"short\n").expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"short\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("doc.yaml")]);
    }

    #[test]
    fn readers_never_see_a_partial_document_while_it_is_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("doc.yaml");
        let small = b"x: 1\n".to_vec();
        let large = format!("x: 2\npad: {}\n", "y".repeat(256 * 1024)).into_bytes();
        write_atomic(&path, &small).expect("seed");
        let writer = {
            let (path, small, large) = (path.clone(), small.clone(), large.clone());
            std::thread::spawn(move || {
                for round in 0..50 {
                    let doc = if round % 2 == 0 { &large } else { &small };
                    write_atomic(&path, doc).expect("write");
                }
            })
        };
        for _ in 0..200 {
            let seen = fs::read(&path).expect("read");
            assert!(
                seen == small || seen == large,
                "a partial document was read"
            );
        }
        writer.join().expect("writer");
    }

    #[test]
    fn concurrent_appends_lose_no_update() {
        const WRITERS: u16 = 20;
        let dir = tempfile::tempdir().expect("tempdir");
        let threads: Vec<_> = (0..WRITERS)
            .map(|i| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    // Each writer has its own backend and lock handle, as separate processes do.
                    // Arrays are replaced whole by a merge patch, so the list only ends up
                    // complete if every cycle saw the previous one's result.
                    let backend = StateDirBackend::new(dir);
                    backend
                        .update_mesh_config(|current| {
                            let mut ports =
                                current.spec.traffic.inbound_port_exclusion_list.clone();
                            ports.push(20000 + i);
                            json!({"spec": {"traffic": {"inboundPortExclusionList": ports}}})
                        })
                        .expect("patch");
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("writer");
        }
        let config = StateDirBackend::new(dir.path())
            .read_mesh_config()
            .expect("read");
        let mut ports = config.spec.traffic.inbound_port_exclusion_list.clone();
        ports.sort();
        assert_eq!(ports, (0..WRITERS).map(|i| 20000 + i).collect::<Vec<_>>());
    }

    #[test]
    fn concurrent_patches_of_different_fields_all_land() {
        let patches = [
            json!({"spec": {"observability": {"tracing": {"enable": true}}}}),
            json!({"spec": {"observability": {"tracing": {"address": "collector.local"}}}}),
            json!({"spec": {"observability": {"tracing": {"port": 4318}}}}),
            json!({"spec": {"observability": {"tracing": {"endpoint": "/v1/traces"}}}}),
            json!({"spec": {"observability": {"tracing": {"protocol": "otlp-http"}}}}),
            json!({"spec": {"observability": {"tracing": {"sampledFraction": 0.25}}}}),
            json!({"spec": {"traffic": {"inboundPortExclusionList": [8081]}}}),
            json!({"spec": {"traffic": {"outboundPortExclusionList": [5432]}}}),
            json!({"spec": {"traffic": {"outboundIPRangeExclusionList": ["10.0.0.0/8"]}}}),
            json!({"spec": {"traffic": {"opaquePorts": [3306]}}}),
            json!({"spec": {"sidecar": {"logLevel": "debug"}}}),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let threads: Vec<_> = patches
            .iter()
            .cloned()
            .map(|patch| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    StateDirBackend::new(dir)
                        .patch_mesh_config_blocking(&patch)
                        .expect("patch");
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("writer");
        }
        let config = StateDirBackend::new(dir.path())
            .read_mesh_config()
            .expect("read");
        let tracing = &config.spec.observability.tracing;
        assert!(tracing.enable);
        assert_eq!(tracing.address, "collector.local");
        assert_eq!(tracing.port, 4318);
        assert_eq!(tracing.endpoint, "/v1/traces");
        assert_eq!(tracing.protocol, mesh_config::Protocol::OtlpHttp);
        assert_eq!(tracing.sampled_fraction, 0.25);
        let traffic = &config.spec.traffic;
        assert_eq!(traffic.inbound_port_exclusion_list, vec![8081]);
        assert_eq!(traffic.outbound_port_exclusion_list, vec![5432]);
        assert_eq!(
            traffic.outbound_ip_range_exclusion_list,
            vec!["10.0.0.0/8".to_string()]
        );
        assert_eq!(traffic.opaque_ports, vec![3306]);
        assert_eq!(config.spec.sidecar.log_level, mesh_config::LogLevel::Debug);
    }
}
