//! The common shape of a meshed test: a client pod and a server pod, each with `mesh-proxy init`
//! applied and a sidecar running. Apps are started by the test (`mesh.server.spawn_server(..)`).

use crate::{Net, Pod, Sidecar, SidecarOpts};

/// Two meshed pods on one net. Fields drop in order: sidecars, then pods, then the net.
pub struct Mesh {
    pub client_sidecar: Sidecar,
    pub server_sidecar: Sidecar,
    pub client: Pod,
    pub server: Pod,
    pub net: Net,
}

impl Mesh {
    /// Builds pods `client` and `server` with default init flags; both sidecars get `opts`
    /// (their `--service` is the pod name unless `opts.service` says otherwise).
    pub fn new(opts: SidecarOpts) -> anyhow::Result<Mesh> {
        Mesh::with(opts.clone(), opts)
    }

    /// Like [`Mesh::new`] with different options per side.
    pub fn with(client_opts: SidecarOpts, server_opts: SidecarOpts) -> anyhow::Result<Mesh> {
        let net = Net::new()?;
        let client = Pod::new(&net, "client")?;
        let server = Pod::new(&net, "server")?;
        client.init(&[])?;
        server.init(&[])?;
        let server_sidecar = server.start_sidecar(server_opts)?;
        let client_sidecar = client.start_sidecar(client_opts)?;
        Ok(Mesh {
            client_sidecar,
            server_sidecar,
            client,
            server,
            net,
        })
    }
}
