//! `S3Config` and turning it into an S3 client: endpoint, region, path-style
//! addressing, static keys or the AWS default credential chain, proxy.

use std::fmt;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder, Connector};
use ncps_core::{Error, Result};

use super::proxy::S3Proxy;

/// Region used when none is configured anywhere; S3-compatible servers
/// usually ignore it, but requests must be signed for some region.
const FALLBACK_REGION: &str = "us-east-1";

/// How long to wait for a TCP (and TLS) connection to S3.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long to wait for the response to one request, part uploads included.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how to reach an S3 bucket.
///
/// `Debug` never shows the secret access key.
#[derive(Clone, Default)]
pub struct S3Config {
    /// The bucket; it must exist.
    pub bucket: String,
    /// The endpoint URL with its scheme (`http://127.0.0.1:9000`), for
    /// S3-compatible servers; `None` for AWS S3.
    pub endpoint: Option<String>,
    /// The region; `None` reads the AWS default region chain, then falls back
    /// to `us-east-1`.
    pub region: Option<String>,
    /// Address the bucket as `endpoint/bucket/key` instead of
    /// `bucket.endpoint/key`; most self-hosted servers need this.
    pub force_path_style: bool,
    /// Static access key id; with `secret_access_key`. When both are `None`,
    /// credentials come from the AWS default chain (environment, profile,
    /// web identity, container or instance role).
    pub access_key_id: Option<String>,
    /// Static secret access key; with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// A key prefix (`cache-a` stores `nar/x.nar` as `cache-a/nar/x.nar`), so
    /// several caches can share one bucket.
    pub prefix: Option<String>,
    /// The HTTP forward proxy to reach S3 through; the default, none, is
    /// direct. Programs take it from the environment with
    /// [`S3Proxy::from_env`]; the library never reads the environment itself.
    pub proxy: S3Proxy,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("prefix", &self.prefix)
            .field("proxy", &self.proxy)
            .finish()
    }
}

impl S3Config {
    /// The endpoint for messages: the URL, or "AWS S3" for the default.
    pub(crate) fn endpoint_for_display(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => "AWS S3".to_string(),
        }
    }

    /// The prefix without surrounding slashes, or `None` if empty.
    pub(crate) fn normalized_prefix(&self) -> Result<Option<String>> {
        let Some(prefix) = &self.prefix else {
            return Ok(None);
        };
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Ok(None);
        }
        crate::key::validate_key(prefix)
            .map_err(|e| Error::InvalidInput(format!("S3 key prefix {prefix:?}: {e}")))?;
        Ok(Some(prefix.to_string()))
    }

    /// Checks the parts of the configuration that need no network.
    fn validate(&self) -> Result<()> {
        if self.bucket.is_empty() {
            return Err(Error::InvalidInput("S3 bucket name is empty".to_string()));
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(Error::InvalidInput(format!(
                "S3 endpoint {endpoint:?} needs a scheme (http:// or https://)"
            )));
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => Err(Error::InvalidInput(
                "S3 access key id given without a secret access key".to_string(),
            )),
            (None, Some(_)) => Err(Error::InvalidInput(
                "S3 secret access key given without an access key id".to_string(),
            )),
            _ => Ok(()),
        }
    }

    /// Builds the S3 client this configuration describes.
    pub(crate) async fn client(&self) -> Result<aws_sdk_s3::Client> {
        self.validate()?;
        let https = match &self.endpoint {
            Some(endpoint) => endpoint.starts_with("https://"),
            None => true,
        };
        let proxy = self.proxy.config(https)?;
        // rustls on ring: no OpenSSL and no C build of aws-lc. Built as the
        // SDK builds its default client, which is the only way to set a proxy.
        let http_client = Builder::new().build_with_connector_fn(move |settings, components| {
            let mut connector =
                Connector::builder().tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector.set_proxy_config(Some(proxy.clone()));
            connector.build()
        });
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .timeout_config(timeouts)
            // Checksums only where S3 demands them: several S3-compatible
            // servers mishandle the aws-chunked trailers the SDK sends otherwise.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "ncps-config",
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        // Without a region the loader asks the AWS default region chain.
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;

        let mut config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(self.force_path_style);
        if shared.region().is_none() {
            config = config.region(Region::new(FALLBACK_REGION));
        }
        let config = config.build();
        Ok(aws_sdk_s3::Client::from_conf(config))
    }
}

#[cfg(test)]
mod tests {
    use super::S3Config;

    #[test]
    fn debug_hides_the_secret() {
        let config = S3Config {
            bucket: "b".to_string(),
            access_key_id: Some("AKIDEXAMPLE".to_string()),
            secret_access_key: Some("very-secret".to_string()),
            ..S3Config::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn prefix_is_trimmed_and_checked() {
        let with = |p: &str| S3Config {
            prefix: Some(p.to_string()),
            ..S3Config::default()
        };
        assert_eq!(
            with("/a/b/").normalized_prefix().ok(),
            Some(Some("a/b".to_string()))
        );
        assert_eq!(with("/").normalized_prefix().ok(), Some(None));
        assert!(with("a/../b").normalized_prefix().is_err());
    }

    #[test]
    fn half_given_keys_are_rejected() {
        let config = S3Config {
            bucket: "b".to_string(),
            access_key_id: Some("id".to_string()),
            ..S3Config::default()
        };
        assert!(config.validate().is_err());
        let config = S3Config {
            bucket: "b".to_string(),
            endpoint: Some("localhost:9000".to_string()),
            ..S3Config::default()
        };
        assert!(config.validate().is_err());
    }
}
