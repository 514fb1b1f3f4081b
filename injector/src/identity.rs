//! The serving identity kept in step, on every replica: the Secret (`secret`, which creates or
//! renews it when due) → the certificate served (`tls::LiveCert`) and the CA handed to pods →
//! the webhook's caBundle (`cabundle`). Each replica checks on its own, so a renewal written by
//! one reaches the others within a check interval; the bundle grows before any replica serves a
//! certificate of a new CA (see `certs`), so replicas a check apart never disagree in a way
//! that matters.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cabundle::CaBundle;
use crate::certs::Material;
use crate::secret::CertStore;
use crate::tls::LiveCert;

/// How often every replica re-reads the certificate Secret: a renewal by another replica, or
/// cert-manager's, is served (and its caBundle checked) within this.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Longest pause between attempts to obtain the first certificate (RBAC or API trouble).
const FIRST_RETRY_MAX: Duration = Duration::from_secs(30);

/// The certificate from the Secret, waiting (and saying why in the log) until it can be had.
pub async fn obtain(store: &CertStore) -> Material {
    let mut pause = Duration::from_secs(1);
    loop {
        match store.sync(SystemTime::now()).await {
            Ok(m) => return m,
            Err(e) => {
                tracing::warn!(error = %e, "no serving certificate yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(FIRST_RETRY_MAX);
            }
        }
    }
}

/// One check: the Secret read (renewed when due), its material served if it verifies, the
/// caBundle patched if it differs. Each failure is logged and left for the next check.
pub async fn refresh(store: &CertStore, bundle: &CaBundle, live: &LiveCert) {
    let material = match store.sync(SystemTime::now()).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the serving certificate");
            return;
        }
    };
    match live.set(&material) {
        Ok(true) => tracing::info!("serving the renewed certificate"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "certificate refused; serving the previous one"),
    }
    if let Err(e) = bundle.ensure(&material.ca_bundle_pem).await {
        tracing::warn!(error = %e, "cannot update the webhook's caBundle");
    }
}

/// Checks now and then every [`CHECK_INTERVAL`], for the life of the process.
pub async fn keep(store: CertStore, bundle: CaBundle, live: Arc<LiveCert>) {
    loop {
        refresh(&store, &bundle, &live).await;
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}
