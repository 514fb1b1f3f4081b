//! The webhook's TLS material for `mesh install`: a fresh CA whose certificate goes into the
//! MutatingWebhookConfiguration's caBundle, and a serving certificate for the injector's Service,
//! signed by it. A new CA per install means no private key ever ships in the manifests.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The injector's Service, as the API server addresses it when calling the webhook.
pub const SERVICE: &str = "mesh-injector";

/// How long the generated certificates last. Reinstalling rotates them; ten years keeps a lab
/// cluster from failing on a forgotten expiry, and a production one rotates through its own PKI.
const VALIDITY_DAYS: i64 = 3650;

pub struct WebhookTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// DNS names the API server may use for the Service, short and fully qualified.
pub fn service_dns_names(namespace: &str) -> Vec<String> {
    vec![
        format!("{SERVICE}.{namespace}.svc"),
        format!("{SERVICE}.{namespace}.svc.cluster.local"),
        format!("{SERVICE}.{namespace}"),
        SERVICE.to_string(),
    ]
}

pub fn generate(namespace: &str) -> Result<WebhookTls, rcgen::Error> {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
    // An hour of slack for clocks that run a little behind ours.
    let not_before = now - std::time::Duration::from_secs(3600);
    let not_after = now + std::time::Duration::from_secs(VALIDITY_DAYS as u64 * 86_400);

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("tracemesh webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let names = service_dns_names(namespace);
    let mut params = CertificateParams::new(names.clone())?;
    params.distinguished_name = name(&names[0]);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let issuer = Issuer::new(ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;

    Ok(WebhookTls {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "tracemesh");
    name
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    /// Verifies `cert_pem` for `name` against `ca_pem` exactly as a TLS client (the API server)
    /// would: chain, validity, key usage and subject alternative name.
    pub fn verify(ca_pem: &str, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM");
        roots.add(ca)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("verifier");
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert PEM");
        let name = ServerName::try_from(name.to_string()).expect("server name");
        verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn serving_certificate_is_signed_by_the_ca_for_the_service_names() {
        let tls = generate("mesh-system").expect("generate");
        for name in [
            "mesh-injector.mesh-system.svc",
            "mesh-injector.mesh-system.svc.cluster.local",
        ] {
            verify(&tls.ca_pem, &tls.cert_pem, name).expect(name);
        }
        assert!(verify(&tls.ca_pem, &tls.cert_pem, "evil.example.com").is_err());
    }

    #[test]
    fn each_install_gets_its_own_ca() {
        let first = generate("mesh-system").expect("first");
        let second = generate("mesh-system").expect("second");
        assert_ne!(first.ca_pem, second.ca_pem);
        assert!(verify(
            &first.ca_pem,
            &second.cert_pem,
            "mesh-injector.mesh-system.svc"
        )
        .is_err());
    }
}
