//! Certificates and keys from PEM files, for every TLS listener (the MQTT endpoint, the HTTP
//! API, the PostgreSQL port): a file that holds none, or cannot be read, is an error naming it.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("TLS ({path}): {reason}")]
pub struct PemError {
    pub path: PathBuf,
    pub reason: String,
}

fn failed(path: &Path, reason: String) -> PemError {
    PemError {
        path: path.to_owned(),
        reason,
    }
}

/// Every certificate of the file, in order: a chain, or a CA bundle. At least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(path, e.to_string()))?;
    if chain.is_empty() {
        return Err(failed(path, "no certificate in it".to_owned()));
    }
    Ok(chain)
}

/// The file's private key.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| failed(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = certificates(&path).unwrap_err();
        assert_eq!(error.path, path);
        assert!(error.to_string().contains("no certificate"), "{error}");
        assert!(private_key(&dir.path().join("missing.pem")).is_err());
    }
}
