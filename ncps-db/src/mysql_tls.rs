//! TLS to MySQL or MariaDB as the URL's `tls` parameter says (the Go
//! driver's values, which ncps takes), on rustls with ring.
//!
//! | parameter | TLS | the server's certificate |
//! |---|---|---|
//! | `tls=false` (default) | never | - |
//! | `tls=preferred` | if the server offers it | not checked |
//! | `tls=skip-verify` | always | not checked |
//! | `tls=true` (also `require_ssl=true`) | always | signed by a trusted CA and naming the host |
//!
//! The trusted CAs are those of the PEM file `ssl-ca=<file>` names (which
//! turns on `tls=true` when no `tls` is given), or else the system's roots
//! (`SSL_CERT_FILE` or `SSL_CERT_DIR` when set). Over a Unix socket there is
//! no TLS.

use mysql_async::SslOpts;

/// What a URL asks of TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Off,
    Preferred,
    SkipVerify,
    Verify,
}

impl Mode {
    /// The mode of a `tls` parameter's value.
    pub(crate) fn parse(value: &str) -> Result<Mode, String> {
        match value {
            "false" => Ok(Mode::Off),
            "preferred" => Ok(Mode::Preferred),
            "skip-verify" => Ok(Mode::SkipVerify),
            "true" => Ok(Mode::Verify),
            _ => Err(format!(
                "tls={value}: expected true, false, skip-verify or preferred"
            )),
        }
    }
}

/// mysql_async's TLS options for `mode`, with the trusted roots read (from
/// `ca_file`, or the system's) when the certificate is checked; `None`
/// without TLS. The error says which roots could not be read.
pub(crate) fn ssl_opts(mode: Mode, ca_file: Option<&str>) -> Result<Option<SslOpts>, String> {
    let opts = SslOpts::default();
    Ok(match mode {
        Mode::Off => None,
        Mode::Preferred | Mode::SkipVerify => Some(
            opts.with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        Mode::Verify => {
            // mysql_async reads DER buffers as they are; its own built-in
            // roots (Mozilla's) are left out for the system's.
            let roots = crate::tls::root_certs(ca_file)?
                .into_iter()
                .map(|cert| cert.to_vec().into())
                .collect();
            Some(
                opts.with_root_certs(roots)
                    .with_disable_built_in_roots(true),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_go_driver_values() {
        assert_eq!(Mode::parse("true"), Ok(Mode::Verify));
        assert_eq!(Mode::parse("false"), Ok(Mode::Off));
        assert_eq!(Mode::parse("skip-verify"), Ok(Mode::SkipVerify));
        assert_eq!(Mode::parse("preferred"), Ok(Mode::Preferred));
        assert!(Mode::parse("custom").is_err());
    }

    #[test]
    fn only_verify_checks_certificates() {
        assert_eq!(ssl_opts(Mode::Off, None), Ok(None));
        let skip = ssl_opts(Mode::SkipVerify, None).unwrap().unwrap();
        assert!(skip.accept_invalid_certs());
        let e = ssl_opts(Mode::Verify, Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
