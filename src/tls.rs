//! TLS termination's certificates, held behind a resolver that can be swapped while the
//! listener runs: [`reload_certificates`] makes new handshakes use new files, and connections
//! already open keep the certificate they were given.
//!
//! A client naming a host (SNI) gets the certificate valid for that name, wildcards included,
//! and no certificate at all — its handshake alone fails — when none is valid for it; a client
//! naming no host (an address in the URL) gets the default, the first pair. Every error names
//! the configuration key of the file concerned, for `mpapi -t` and the start-up refusal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use pingora::utils::tls::{WrappedX509, parse_x509};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// One certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The key naming the chain in the configuration (`server.tls.cert`).
    pub cert_key: String,
    pub cert: PathBuf,
    /// The key naming the private key in the configuration (`server.tls.key`).
    pub key_key: String,
    pub key: PathBuf,
}

/// A certificate file that cannot serve, with the configuration key naming it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {}: {source}", path.display())]
    Unreadable {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {} holds no PEM certificate", path.display())]
    NoCertificate { key: String, path: PathBuf },
    #[error("{key}: {} holds no PEM private key", path.display())]
    NoPrivateKey { key: String, path: PathBuf },
    #[error("{key}: {} is not a usable private key: {problem}", path.display())]
    BadPrivateKey {
        key: String,
        path: PathBuf,
        problem: String,
    },
    #[error("{key}: the key does not match the certificate {}", cert.display())]
    KeyMismatch { key: String, cert: PathBuf },
    #[error("{key}: cannot load the system's root certificates: {problem}")]
    SystemRoots { key: String, problem: String },
    #[error("{key}: {} holds a certificate that cannot serve as a root: {problem}", path.display())]
    BadRoot {
        key: String,
        path: PathBuf,
        problem: String,
    },
    #[error("server.tls: no certificate configured")]
    Empty,
    #[error("server.tls: the gateway was started without a TLS listener")]
    NotListening,
    #[error("server.tls: no TLS crypto provider available")]
    NoCryptoProvider,
}

/// Read, parse and pair one chain with its key; the key must be the certificate's.
pub fn load_pair(files: &CertificateFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read(&files.cert_key, &files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            key: files.cert_key.clone(),
            path: files.cert.clone(),
        });
    }
    let key_pem = read(&files.key_key, &files.key)?;
    let private_key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoPrivateKey {
            key: files.key_key.clone(),
            path: files.key.clone(),
        })?;
    let provider = crypto_provider()?;
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| TlsError::BadPrivateKey {
            key: files.key_key.clone(),
            path: files.key.clone(),
            problem: e.to_string(),
        })?;
    let pair = CertifiedKey::new(chain, signing_key);
    pair.keys_match().map_err(|_| TlsError::KeyMismatch {
        key: files.key_key.clone(),
        cert: files.cert.clone(),
    })?;
    Ok(Arc::new(pair))
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// The roots an HTTPS upstream's certificate may chain to, in Pingora's form.
pub type UpstreamRoots = pingora::protocols::tls::CaType;

/// The system's root certificates plus those of the PEM file at `path` (`key` names it in
/// errors): what an HTTPS upstream behind a private CA is verified against, and a digest of
/// them. Each certificate is checked as a trust anchor before Pingora parses it.
pub fn load_upstream_roots(key: &str, path: &Path) -> Result<(Arc<UpstreamRoots>, u64), TlsError> {
    let pem = read(key, path)?;
    let private: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadRoot {
            key: key.to_string(),
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    if private.is_empty() {
        return Err(TlsError::NoCertificate {
            key: key.to_string(),
            path: path.to_path_buf(),
        });
    }
    for cert in &private {
        webpki::anchor_from_trusted_cert(cert).map_err(|e| TlsError::BadRoot {
            key: key.to_string(),
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    }
    let system = rustls_native_certs::load_native_certs().map_err(|e| TlsError::SystemRoots {
        key: key.to_string(),
        problem: e.to_string(),
    })?;
    // A system root Pingora cannot parse is left out rather than allowed to stop the start.
    let usable_system = system
        .into_iter()
        .filter(|cert| webpki::anchor_from_trusted_cert(cert).is_ok());
    let certificates: Vec<CertificateDer<'static>> =
        private.into_iter().chain(usable_system).collect();
    // Compared only within this process (the roots in force against a reload's).
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        for cert in &certificates {
            cert.as_ref().hash(&mut hasher);
        }
        hasher.finish()
    };
    let roots: Vec<WrappedX509> = certificates
        .into_iter()
        .map(|cert| WrappedX509::new(cert.to_vec(), parse_x509))
        .collect();
    Ok((Arc::from(roots), digest))
}

/// The process-wide rustls provider (ring, which Pingora's listener installs too).
fn crypto_provider() -> Result<&'static Arc<CryptoProvider>, TlsError> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default().ok_or(TlsError::NoCryptoProvider)
}

/// The certificates one listener serves: the default first, then any chosen by SNI.
#[derive(Debug)]
pub struct CertificateSet {
    pairs: Vec<Arc<CertifiedKey>>,
}

impl CertificateSet {
    /// Load every pair; the first is the default.
    pub fn load(files: &[CertificateFiles]) -> Result<Self, TlsError> {
        let pairs = files.iter().map(load_pair).collect::<Result<Vec<_>, _>>()?;
        if pairs.is_empty() {
            return Err(TlsError::Empty);
        }
        Ok(Self { pairs })
    }

    /// The certificate for a handshake naming `sni` (or none).
    fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = sni else {
            return self.pairs.first().cloned();
        };
        let name = ServerName::try_from(sni).ok()?;
        self.pairs
            .iter()
            .find(|pair| valid_for(pair, &name))
            .cloned()
    }
}

fn valid_for(pair: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Some(leaf) = pair.cert.first() else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
}

/// The resolver handed to the TLS listener; [`CertificateResolver::replace`] swaps what it
/// serves without touching open connections.
#[derive(Debug)]
pub struct CertificateResolver {
    current: ArcSwap<CertificateSet>,
}

impl CertificateResolver {
    pub fn new(set: CertificateSet) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(set),
        })
    }

    /// Serve `set` to every handshake from now on.
    pub fn replace(&self, set: CertificateSet) {
        self.current.store(Arc::new(set));
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().choose(client_hello.server_name())
    }
}

/// Load `files` again and make `resolver` serve them; on any error the certificates served
/// so far stay in place and the error names the key of the file at fault.
pub fn reload_certificates(
    resolver: &CertificateResolver,
    files: &[CertificateFiles],
) -> Result<(), TlsError> {
    let set = CertificateSet::load(files)?;
    resolver.replace(set);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed certificate for `names` (the first is the subject), made by the openssl
    /// command; `None` when it is not installed.
    fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> Option<CertificateFiles> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        let san = names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={}", names[0]))
            .arg("-addext")
            .arg(format!("subjectAltName={san}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .ok()?;
        assert!(status.status.success(), "openssl: {status:?}");
        Some(CertificateFiles {
            cert_key: "server.tls.cert".into(),
            cert,
            key_key: "server.tls.key".into(),
            key,
        })
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mpapi_tls_{}", crate::sim::random_hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn leaf(pair: &CertifiedKey) -> &[u8] {
        pair.cert[0].as_ref()
    }

    #[test]
    fn sni_chooses_the_certificate_valid_for_the_name_and_refuses_unknown_names() {
        let dir = temp_dir();
        let Some(api) = self_signed(&dir, "api", &["api.example.com"]) else {
            eprintln!("skipped: no openssl command to make certificates");
            return;
        };
        let wild = self_signed(&dir, "wild", &["*.shop.example.com"]).unwrap();
        let set = CertificateSet::load(&[api.clone(), wild.clone()]).unwrap();
        let api_pair = load_pair(&api).unwrap();
        let wild_pair = load_pair(&wild).unwrap();
        let chosen = |sni| set.choose(sni).map(|p| leaf(&p).to_vec());
        assert_eq!(
            chosen(Some("api.example.com")),
            Some(leaf(&api_pair).to_vec())
        );
        assert_eq!(
            chosen(Some("a.shop.example.com")),
            Some(leaf(&wild_pair).to_vec())
        );
        assert_eq!(
            chosen(None),
            Some(leaf(&api_pair).to_vec()),
            "no SNI: the default"
        );
        assert_eq!(chosen(Some("other.example.com")), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_key_of_another_certificate_or_a_missing_file_is_refused_naming_its_key() {
        let dir = temp_dir();
        let Some(one) = self_signed(&dir, "one", &["one.example.com"]) else {
            eprintln!("skipped: no openssl command to make certificates");
            return;
        };
        let two = self_signed(&dir, "two", &["two.example.com"]).unwrap();
        let crossed = CertificateFiles {
            key: two.key.clone(),
            ..one.clone()
        };
        let error = load_pair(&crossed).unwrap_err().to_string();
        assert!(
            error.starts_with("server.tls.key: the key does not match"),
            "{error}"
        );
        let missing = CertificateFiles {
            cert: dir.join("absent.crt"),
            ..one.clone()
        };
        let error = load_pair(&missing).unwrap_err().to_string();
        assert!(error.starts_with("server.tls.cert: cannot read"), "{error}");
        let not_pem = CertificateFiles {
            cert: one.key.clone(),
            ..one.clone()
        };
        let error = load_pair(&not_pem).unwrap_err().to_string();
        assert!(error.starts_with("server.tls.cert: "), "{error}");
        assert!(error.contains("no PEM certificate"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_reload_serves_new_files_and_a_failed_reload_keeps_the_old_ones() {
        let dir = temp_dir();
        let Some(old) = self_signed(&dir, "old", &["api.example.com"]) else {
            eprintln!("skipped: no openssl command to make certificates");
            return;
        };
        let new = self_signed(&dir, "new", &["api.example.com"]).unwrap();
        let resolver =
            CertificateResolver::new(CertificateSet::load(std::slice::from_ref(&old)).unwrap());
        let served = || leaf(&resolver.current.load().choose(None).unwrap()).to_vec();
        let before = served();
        assert_eq!(before, leaf(&load_pair(&old).unwrap()));
        reload_certificates(&resolver, std::slice::from_ref(&new)).unwrap();
        let after = served();
        assert_eq!(after, leaf(&load_pair(&new).unwrap()));
        assert_ne!(before, after);
        let broken = CertificateFiles {
            key: old.key.clone(),
            ..new.clone()
        };
        assert!(reload_certificates(&resolver, &[broken]).is_err());
        assert_eq!(served(), after, "a failed reload changes nothing");
        let _ = std::fs::remove_dir_all(dir);
    }
}
