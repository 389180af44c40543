//! TLS to PostgreSQL as libpq's `sslmode` and `sslrootcert` parameters say,
//! on rustls with ring.
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `allow`, `prefer` (default) | if the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`, as `verify-ca` (as libpq) |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA and naming the host |
//!
//! The trusted CAs are those of the PEM file `sslrootcert` names, or else
//! the system's roots (`SSL_CERT_FILE` or `SSL_CERT_DIR` when set; also
//! `sslrootcert=system`). libpq would look for `~/.postgresql/root.crt`
//! instead; a server has no such home. Over a Unix socket there is no TLS
//! (`prefer` connects without; `require` and up fail).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::db_url::decode;

/// The URL parameters read here, not by tokio-postgres.
const PARAMS: &[&str] = &["sslmode", "sslrootcert"];

/// What a URL asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsParams {
    mode: Mode,
    /// `sslrootcert`: a PEM file, or `system` for the system's roots.
    root_cert: Option<String>,
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

impl TlsParams {
    /// Takes `sslmode` and `sslrootcert` out of `url`'s query (tokio-postgres
    /// knows neither `verify-*` nor `sslrootcert`): the URL without them,
    /// and what they say.
    pub(crate) fn take(url: &str) -> Result<(String, TlsParams), String> {
        let mut params = TlsParams {
            mode: Mode::Prefer,
            root_cert: None,
        };
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), params));
        };
        let mut rest = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (decode(key), decode(value));
            if !PARAMS.contains(&key.as_str()) {
                rest.push(pair);
                continue;
            }
            if key == "sslrootcert" {
                params.root_cert = Some(value).filter(|v| !v.is_empty());
                continue;
            }
            params.mode = match value.as_str() {
                "disable" => Mode::Disable,
                "allow" | "prefer" => Mode::Prefer,
                "require" => Mode::Require,
                "verify-ca" => Mode::VerifyCa,
                "verify-full" => Mode::VerifyFull,
                _ => {
                    return Err(format!(
                        "sslmode={value}: expected disable, allow, prefer, require, verify-ca \
                         or verify-full"
                    ));
                }
            };
        }
        let url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        Ok((url, params))
    }

    /// tokio-postgres's mode: whether TLS is tried, and whether it must work.
    pub(crate) fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// How much of the server's certificate is checked.
    fn check(&self) -> Check {
        match self.mode {
            Mode::Disable | Mode::Prefer => Check::Nothing,
            Mode::Require if self.root_cert.is_none() => Check::Nothing,
            Mode::Require | Mode::VerifyCa => Check::Chain,
            Mode::VerifyFull => Check::ChainAndName,
        }
    }

    /// The connector for tokio-postgres, with the trusted roots loaded when
    /// the certificate is checked. The error says which roots could not be
    /// read.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let check = self.check();
        if check == Check::Nothing {
            let config = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCheck(provider)))
                .with_no_client_auth();
            return Ok(MakeRustlsConnect::new(config));
        }
        let file = self.root_cert.as_deref().filter(|f| *f != "system");
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(crate::tls::root_certs(file)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        let config = if check == Check::ChainAndName {
            builder.with_webpki_verifier(webpki)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        };
        Ok(MakeRustlsConnect::new(config.with_no_client_auth()))
    }
}

/// Takes any certificate (`sslmode=prefer` or `require`), still checking
/// that the server holds its key.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks that the certificate chains to a trusted CA but not which host it
/// names (`sslmode=verify-ca`). rustls checks the chain before the name, so
/// a wrong name alone means the chain is good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_tls_parameters_out_of_the_url() {
        let (url, params) = TlsParams::take(
            "postgres://u:p@h/db?connect_timeout=2&sslmode=verify-full&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        assert_eq!(url, "postgres://u:p@h/db?connect_timeout=2");
        assert_eq!(params.mode, Mode::VerifyFull);
        assert_eq!(params.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(params.check(), Check::ChainAndName);
        assert_eq!(params.ssl_mode(), SslMode::Require);

        let (url, params) = TlsParams::take("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(url, "postgres://h/db");
        assert_eq!(params.ssl_mode(), SslMode::Disable);

        let (url, params) = TlsParams::take("postgres://h/db").unwrap();
        assert_eq!(url, "postgres://h/db");
        assert_eq!(
            (params.ssl_mode(), params.check()),
            (SslMode::Prefer, Check::Nothing)
        );

        assert!(TlsParams::take("postgres://h/db?sslmode=bogus").is_err());
    }

    #[test]
    fn require_checks_the_chain_only_with_a_root_cert() {
        let (_, params) = TlsParams::take("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(params.check(), Check::Nothing);
        let (_, params) =
            TlsParams::take("postgres://h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(params.check(), Check::Chain);
        let (_, params) = TlsParams::take("postgres://h/db?sslmode=verify-ca").unwrap();
        assert_eq!(params.check(), Check::Chain);
    }

    #[test]
    fn a_missing_root_cert_file_is_named() {
        let (_, params) =
            TlsParams::take("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
                .unwrap();
        let e = params.connector().err().unwrap();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
