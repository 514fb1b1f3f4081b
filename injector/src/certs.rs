//! The webhook's certificate material and its life: a CA, a serving certificate signed by it,
//! and the rules for when each is renewed. Pure (material and a clock in, a plan out), so the
//! rotation schedule is tested without waiting years; `secret` stores what this decides.
//!
//! Pods are handed the CA bundle when they are injected and keep it for their life, so a CA
//! change is the event that can strand running sidecars. Hence the shape of a rotation: the new
//! CA joins the bundle long before the serving certificate moves to it ([`CA_OVERLAP`]), every
//! pod injected meanwhile trusts both, and an old CA leaves the bundle only once it has expired.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

const DAY: u64 = 86_400;
/// A CA change is what disturbs running pods, so it happens rarely: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY);
/// A new CA is made this long before the current one ends, leaving room for the overlap and
/// for a cluster that was switched off for a while.
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(730 * DAY);
/// The serving certificate moves to a new CA only once that CA has been in the bundle this
/// long: pods (re)created within the year trust both CAs when the switch happens.
pub const CA_OVERLAP: Duration = Duration::from_secs(365 * DAY);
/// The serving certificate's key is replaced yearly; its CA does not change with it.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * DAY);
/// Renewed a month before it ends: time enough for every replica's periodic check to see it.
pub const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(30 * DAY);
/// Certificates start an hour in the past for API servers whose clock runs behind ours.
const CLOCK_SLACK: Duration = Duration::from_secs(3600);

/// What the Secret holds (type `kubernetes.io/tls`, plus the CA key so any replica can renew).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// `ca.crt`: every CA currently trusted, oldest first. The webhook's caBundle and the CA
    /// handed to injected pods.
    pub ca_bundle_pem: String,
    /// `tls.crt`: the serving certificate.
    pub cert_pem: String,
    /// `tls.key`.
    pub key_pem: String,
    /// `ca.key`: the key of the CA that signs new serving certificates. Absent in material made
    /// elsewhere (cert-manager, an older install); a renewal then starts a new CA.
    pub ca_key_pem: Option<String>,
    /// `ca-next.key`: the key of a CA that has joined the bundle and will sign once the
    /// overlap is over.
    pub next_ca_key_pem: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}: not a PEM certificate")]
    Parse(&'static str),
    #[error("the serving certificate does not verify against the CA bundle for {name}: {reason}")]
    Verify { name: String, reason: String },
}

/// One certificate's facts the schedule needs.
#[derive(Clone, Debug)]
struct CertInfo {
    pem: String,
    der: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
    public_key: Vec<u8>,
}

fn at(ts: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(ts.max(0).unsigned_abs())
}

/// The certificate blocks of a PEM text, each as written (so a bundle re-assembled from them
/// is byte-identical and the webhook's caBundle does not churn).
fn pem_blocks(text: &str) -> Vec<&str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(&rest[start..end]);
        rest = &rest[end..];
    }
    out
}

fn parse_all(pem: &str, what: &'static str) -> Result<Vec<CertInfo>, CertError> {
    let mut out = Vec::new();
    for block in pem_blocks(pem) {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(block.as_bytes())
            .map_err(|_| CertError::Parse(what))?;
        let cert = parsed.parse_x509().map_err(|_| CertError::Parse(what))?;
        out.push(CertInfo {
            pem: format!("{block}\n"),
            der: parsed.contents.clone(),
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        });
    }
    if out.is_empty() {
        return Err(CertError::Parse(what));
    }
    Ok(out)
}

fn remaining(not_after: SystemTime, now: SystemTime) -> Duration {
    not_after.duration_since(now).unwrap_or_default()
}

/// DNS names the API server and sidecars may use for the injector's Service.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "tracemesh");
    name
}

/// rcgen takes `time`'s date type, which it does not re-export: its epoch plus our offset.
fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// A new self-signed CA: (certificate PEM, key PEM).
fn new_ca(now: SystemTime) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name("tracemesh webhook CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(now - CLOCK_SLACK);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(now + CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names` signed by the CA; never outliving it.
fn issue_leaf(
    names: &[String],
    now: SystemTime,
    ca: &CertInfo,
    ca_key_pem: &str,
) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.pem, &ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = name(names.first().map(String::as_str).unwrap_or("mesh-injector"));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(now - CLOCK_SLACK);
    params.not_after =
        rcgen::date_time_ymd(1970, 1, 1) + since_epoch((now + LEAF_VALIDITY).min(ca.not_after));
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether `leaf` chains to one of `cas` for every name at `now`, as a sidecar or the API
/// server would check it (webpki through rustls).
fn verify_leaf(
    cas: &[&CertInfo],
    leaf: &CertInfo,
    names: &[String],
    now: SystemTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(CertificateDer::from(ca.der.clone()))
            .map_err(|e| e.to_string())?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let when = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    let end_entity = CertificateDer::from(leaf.der.clone());
    for n in names {
        let server = ServerName::try_from(n.clone()).map_err(|e| format!("{n}: {e}"))?;
        verifier
            .verify_server_cert(&end_entity, &[], &server, &[], when)
            .map_err(|e| format!("{n}: {e}"))?;
    }
    Ok(())
}

/// Checks that the serving certificate of `m` verifies against its own CA bundle for every
/// name: the guarantee that a pod handed this bundle can reach the server serving this cert.
pub fn verify(m: &Material, names: &[String], now: SystemTime) -> Result<(), CertError> {
    let cas = parse_all(&m.ca_bundle_pem, "ca.crt")?;
    let leaf = parse_all(&m.cert_pem, "tls.crt")?.remove(0);
    verify_leaf(&cas.iter().collect::<Vec<_>>(), &leaf, names, now).map_err(|reason| {
        CertError::Verify {
            name: names.first().cloned().unwrap_or_default(),
            reason,
        }
    })
}

/// What to do with the material found (or not) in the Secret.
#[derive(Debug)]
pub enum Plan {
    /// Good as it is.
    Keep,
    /// Store this instead; `reason` says why, for the log.
    Write { material: Material, reason: String },
}

/// A new CA and a serving certificate signed by it.
pub fn fresh(names: &[String], now: SystemTime) -> Result<Material, CertError> {
    let (ca_pem, ca_key_pem) = new_ca(now)?;
    let ca = parse_all(&ca_pem, "new CA")?.remove(0);
    let (cert_pem, key_pem) = issue_leaf(names, now, &ca, &ca_key_pem)?;
    Ok(Material {
        ca_bundle_pem: ca.pem,
        cert_pem,
        key_pem,
        ca_key_pem: Some(ca_key_pem),
        next_ca_key_pem: None,
    })
}

/// Decides, from what the Secret holds and the time, whether the material stays or what
/// replaces it. Unreadable material is replaced whole; otherwise only what is due changes.
pub fn plan(
    existing: Option<&Material>,
    names: &[String],
    now: SystemTime,
) -> Result<Plan, CertError> {
    let start_over = |reason: String| -> Result<Plan, CertError> {
        Ok(Plan::Write {
            material: fresh(names, now)?,
            reason,
        })
    };
    let Some(m) = existing else {
        return start_over("no certificate yet: a new CA and serving certificate".into());
    };
    let (cas, leaf) = match (
        parse_all(&m.ca_bundle_pem, "ca.crt"),
        parse_all(&m.cert_pem, "tls.crt"),
    ) {
        (Ok(cas), Ok(mut leaf)) => (cas, leaf.remove(0)),
        (Err(e), _) | (_, Err(e)) => return start_over(format!("{e}: starting over")),
    };
    let mut reasons = Vec::new();
    let found = cas.len();
    let mut trusted: Vec<CertInfo> = cas.into_iter().filter(|c| c.not_after > now).collect();
    if found != trusted.len() {
        reasons.push("an expired CA leaves the bundle");
    }
    // A key the Secret holds, with its trusted CA certificate.
    let with_cert = |pem: Option<&str>| {
        let pem = pem?;
        let kp = KeyPair::from_pem(pem).ok()?;
        trusted
            .iter()
            .find(|c| c.public_key == kp.public_key_raw())
            .map(|c| (c.clone(), pem.to_string()))
    };
    let mut signer = with_cert(m.ca_key_pem.as_deref());
    let mut next = with_cert(m.next_ca_key_pem.as_deref());
    if next.is_none()
        && signer
            .as_ref()
            .is_none_or(|(c, _)| remaining(c.not_after, now) < CA_RENEW_BEFORE)
    {
        let (ca_pem, ca_key_pem) = new_ca(now)?;
        let ca = parse_all(&ca_pem, "new CA")?.remove(0);
        trusted.push(ca.clone());
        next = Some((ca, ca_key_pem));
        reasons.push("a new CA joins the bundle");
    }
    let all: Vec<&CertInfo> = trusted.iter().collect();
    let leaf_valid = verify_leaf(&all, &leaf, names, now).is_ok();
    let due = remaining(leaf.not_after, now) < LEAF_RENEW_BEFORE;
    let overlap_done = next
        .as_ref()
        .is_some_and(|(c, _)| now >= c.not_before + CLOCK_SLACK + CA_OVERLAP);
    let must_sign = !leaf_valid || due;
    let (mut cert_pem, mut key_pem) = (m.cert_pem.clone(), m.key_pem.clone());
    // Promoted once the overlap is over, or earlier only when there is nothing else to sign
    // with (material made elsewhere, whose CA key we never had).
    if overlap_done || (must_sign && signer.is_none()) {
        signer = next.take();
        reasons.push("the serving certificate moves to the new CA");
    } else if !leaf_valid {
        reasons.push("the serving certificate does not verify for the Service names");
    } else if due {
        reasons.push("the serving certificate is due for renewal");
    }
    if must_sign || overlap_done {
        let Some((ca, ca_key)) = &signer else {
            return start_over("no CA to sign with".into());
        };
        (cert_pem, key_pem) = issue_leaf(names, now, ca, ca_key)?;
    }
    if reasons.is_empty() {
        return Ok(Plan::Keep);
    }
    let material = Material {
        ca_bundle_pem: trusted.iter().map(|c| c.pem.as_str()).collect(),
        cert_pem,
        key_pem,
        ca_key_pem: signer.map(|(_, k)| k),
        next_ca_key_pem: next.map(|(_, k)| k),
    };
    verify(&material, names, now)?;
    Ok(Plan::Write {
        material,
        reason: reasons.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        service_dns_names("mesh-injector", "mesh-system")
    }

    fn write(p: Plan) -> (Material, String) {
        match p {
            Plan::Write { material, reason } => (material, reason),
            Plan::Keep => panic!("expected a write"),
        }
    }

    fn cas(m: &Material) -> usize {
        pem_blocks(&m.ca_bundle_pem).len()
    }

    #[test]
    fn fresh_material_verifies_and_is_kept() {
        let now = SystemTime::now();
        let (m, reason) = write(plan(None, &names(), now).expect("plan"));
        assert!(reason.contains("no certificate yet"), "{reason}");
        verify(&m, &names(), now).expect("verifies");
        assert!(matches!(
            plan(Some(&m), &names(), now + Duration::from_secs(300 * DAY)).expect("plan"),
            Plan::Keep
        ));
    }

    #[test]
    fn serving_certificate_renews_under_the_same_ca() {
        let now = SystemTime::now();
        let (m, _) = write(plan(None, &names(), now).expect("plan"));
        let later = now + LEAF_VALIDITY - LEAF_RENEW_BEFORE + Duration::from_secs(DAY);
        let (r, reason) = write(plan(Some(&m), &names(), later).expect("plan"));
        assert!(reason.contains("due for renewal"), "{reason}");
        assert_eq!(r.ca_bundle_pem, m.ca_bundle_pem, "same CA, same caBundle");
        assert_ne!(r.cert_pem, m.cert_pem);
        verify(&r, &names(), later).expect("verifies");
    }

    /// A CA rotation walked through: the new CA joins the bundle while the old serving
    /// certificate is still served, the serving certificate moves after the overlap, and the old
    /// CA leaves once expired. At every step the stored bundle verifies the stored certificate.
    #[test]
    fn ca_rotation_overlaps() {
        let t0 = SystemTime::now();
        let (m0, _) = write(plan(None, &names(), t0).expect("plan"));
        let t1 = t0 + CA_VALIDITY - CA_RENEW_BEFORE + Duration::from_secs(DAY);
        // Renew the leaf just before so only the CA step is due at t1.
        let (m0, _) =
            write(plan(Some(&m0), &names(), t1 - Duration::from_secs(20 * DAY)).expect("plan"));
        let (m1, reason) = write(plan(Some(&m0), &names(), t1).expect("plan"));
        assert!(reason.contains("new CA joins"), "{reason}");
        assert_eq!(cas(&m1), 2, "old and new CA during the overlap");
        assert_eq!(
            m1.cert_pem, m0.cert_pem,
            "still serving the old certificate"
        );
        assert!(m1.ca_bundle_pem.starts_with(&m0.ca_bundle_pem));

        // The serving certificate's yearly renewal during the overlap stays with the old CA.
        let renew = t1 + Duration::from_secs(330 * DAY);
        let (m1, reason) = write(plan(Some(&m1), &names(), renew).expect("plan"));
        assert!(reason.contains("due for renewal"), "{reason}");
        let old_only = Material {
            ca_bundle_pem: m0.ca_bundle_pem.clone(),
            ..m1.clone()
        };
        verify(&old_only, &names(), renew).expect("still issued by the old CA");

        let t2 = t1 + CA_OVERLAP + Duration::from_secs(DAY);
        let (m2, reason) = write(plan(Some(&m1), &names(), t2).expect("plan"));
        assert!(reason.contains("moves to the new CA"), "{reason}");
        assert_eq!(cas(&m2), 2);
        assert_eq!(m2.next_ca_key_pem, None);
        verify(&m2, &names(), t2).expect("verifies");
        let old_only = Material {
            ca_bundle_pem: m0.ca_bundle_pem.clone(),
            ..m2.clone()
        };
        assert!(
            verify(&old_only, &names(), t2).is_err(),
            "issued by the new CA"
        );

        let t3 = t0 + CA_VALIDITY + Duration::from_secs(DAY);
        let (m3, reason) = write(plan(Some(&m2), &names(), t3).expect("plan"));
        assert!(reason.contains("expired CA leaves"), "{reason}");
        assert_eq!(cas(&m3), 1);
        verify(&m3, &names(), t3).expect("verifies");
    }
    #[test]
    fn foreign_or_broken_material() {
        let now = SystemTime::now();
        let (m, _) = write(plan(None, &names(), now).expect("plan"));
        // Made elsewhere (no CA key): kept while valid, a new CA when renewal is due.
        let foreign = Material {
            ca_key_pem: None,
            ..m.clone()
        };
        let (r, reason) = write(plan(Some(&foreign), &names(), now).expect("plan"));
        assert!(reason.contains("new CA joins"), "{reason}");
        assert_eq!(r.cert_pem, m.cert_pem);
        let due = now + LEAF_VALIDITY - Duration::from_secs(DAY);
        let (r, reason) = write(plan(Some(&r), &names(), due).expect("plan"));
        assert!(reason.contains("moves to the new CA"), "{reason}");
        verify(&r, &names(), due).expect("verifies");
        // Garbage: start over.
        let broken = Material {
            cert_pem: "not a certificate".into(),
            ..m.clone()
        };
        let (r, reason) = write(plan(Some(&broken), &names(), now).expect("plan"));
        assert!(reason.contains("tls.crt"), "{reason}");
        verify(&r, &names(), now).expect("verifies");
        // A certificate for other names is reissued.
        let other = service_dns_names("other", "elsewhere");
        let (r, reason) = write(plan(Some(&m), &other, now).expect("plan"));
        assert!(reason.contains("does not verify"), "{reason}");
        assert_eq!(r.ca_bundle_pem, m.ca_bundle_pem);
        // A bundle that does not verify the certificate is refused.
        let (stranger, _) = write(plan(None, &names(), now).expect("plan"));
        let mixed = Material {
            ca_bundle_pem: stranger.ca_bundle_pem,
            ..m
        };
        assert!(verify(&mixed, &names(), now).is_err());
    }
}
