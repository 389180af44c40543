//! ncps-server's command line: the shared options of [`ncps_config::options`]
//! at the top level and under the `serve` subcommand.

use clap::{Parser, Subcommand};

pub use ncps_config::options::{GlobalOptions, LockBackend, LogFormat, ServeOptions};

/// `ncps-server [serve] [OPTIONS]`
#[derive(Debug, Parser)]
#[command(name = "ncps-server", version, about = "A Nix binary cache proxy")]
pub struct Cli {
    /// Options valid before and after `serve`.
    #[command(flatten)]
    pub global: GlobalOptions,
    /// `serve`, which is also what runs without a subcommand.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Serve options given without the `serve` subcommand.
    #[command(flatten)]
    pub serve: ServeOptions,
}

impl Cli {
    /// The serve options, wherever on the command line they were given.
    pub fn serve_options(self) -> (GlobalOptions, ServeOptions) {
        match self.command {
            Some(Command::Serve(options)) => (self.global, options),
            None => (self.global, self.serve),
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the cache (the default).
    Serve(ServeOptions),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn serve_is_optional() {
        let plain = Cli::try_parse_from(["ncps-server", "--server-addr", "127.0.0.1:1"]).unwrap();
        let (_, options) = plain.serve_options();
        assert_eq!(options.server_addr, "127.0.0.1:1");
        let sub = Cli::try_parse_from([
            "ncps-server",
            "--log-level",
            "debug",
            "serve",
            "--server-addr",
            "127.0.0.1:2",
            "--cache-sign-narinfo=false",
        ])
        .unwrap();
        let (global, options) = sub.serve_options();
        assert_eq!(options.server_addr, "127.0.0.1:2");
        assert_eq!(global.log_level, "debug");
        assert!(!options.cache_sign_narinfo);
    }

    #[test]
    fn bad_values_name_the_option() {
        let e = Cli::try_parse_from(["ncps-server", "--cache-upstream-dialer-timeout", "x"])
            .unwrap_err();
        assert!(
            e.to_string().contains("--cache-upstream-dialer-timeout"),
            "{e}"
        );
    }

    #[test]
    fn lock_options_have_ncps_defaults() {
        let (_, options) = Cli::try_parse_from(["ncps-server"])
            .unwrap()
            .serve_options();
        assert_eq!(options.cache_lock_backend, None);
        assert!(options.cache_redis_addrs.is_empty());
        assert_eq!(options.cache_redis_db, 0);
        assert_eq!(options.cache_redis_pool_size, 10);
        assert!(!options.cache_redis_use_tls);
        assert_eq!(options.cache_lock_redis_key_prefix, "ncps:lock:");
        assert_eq!(options.cache_lock_retry_max_attempts, 3);
        assert_eq!(
            options.cache_lock_retry_initial_delay,
            Duration::from_millis(100)
        );
        assert_eq!(options.cache_lock_retry_max_delay, Duration::from_secs(2));
        assert!(options.cache_lock_retry_jitter);
        assert!(!options.cache_lock_allow_degraded_mode);

        let (_, options) = Cli::try_parse_from([
            "ncps-server",
            "--cache-redis-addrs",
            "a:1,b:2",
            "--cache-lock-backend",
            "redis",
            "--cache-redis-password",
            "hunter2",
        ])
        .unwrap()
        .serve_options();
        assert_eq!(options.cache_redis_addrs, ["a:1", "b:2"]);
        assert_eq!(options.cache_lock_backend, Some(LockBackend::Redis));
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
