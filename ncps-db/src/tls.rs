//! What the PostgreSQL and MySQL backends share about TLS: the root
//! certificates a server's certificate is checked against, and telling a
//! certificate problem (which retrying will not fix) from a server that is
//! down.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The certificates a server's certificate must chain to: those of the PEM
/// file `ca_file` if given, otherwise the system's roots (those of
/// `SSL_CERT_FILE` or `SSL_CERT_DIR` when set). The error says which file
/// could not be read.
pub(crate) fn root_certs(ca_file: Option<&str>) -> Result<Vec<CertificateDer<'static>>, String> {
    let Some(path) = ca_file else {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            return Err(format!(
                "no root certificates found on this system (set SSL_CERT_FILE, or name a CA \
                 file in the URL){}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {}", why.join("; "))
                }
            ));
        }
        return Ok(found.certs);
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("CA file {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("CA file {path}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// The TLS problem behind `e`, if that is what it is: rustls refusing the
/// server's certificate or the handshake, or a malformed certificate.
pub(crate) fn problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(e);
    while let Some(err) = cause {
        // tokio-rustls hands rustls' error back inside an io::Error, whose
        // `source` skips it.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if candidate.is::<rustls::Error>() || candidate.is::<rustls::pki_types::pem::Error>() {
                return Some(candidate.to_string());
            }
        }
        cause = err.source();
    }
    None
}
