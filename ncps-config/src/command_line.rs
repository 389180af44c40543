//! A command line read with its config file: the file's values become the
//! defaults of the options whose environment variable is unset, so the
//! precedence is flag, then environment, then file, then built-in default,
//! and nothing is written to the process environment.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

use clap::{Arg, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::config_file::{self, ConfigValues};

/// A parsed command line `T`, with what `--check-config` shows of it.
#[derive(Debug)]
pub struct CommandLine<T> {
    /// The parsed options.
    pub parsed: T,
    /// clap's matches, which know where each value came from.
    pub matches: ArgMatches,
    /// The command the matches are of, with the config file's defaults.
    pub command: Command,
    /// The environment variables of the options that took the file's value.
    pub from_file: BTreeSet<String>,
    /// Keys of the config file that no option reads.
    pub unknown_keys: Vec<String>,
}

/// Why a command line was not read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The config file is unreadable or malformed: `--config <path>: why`.
    #[error("{0}")]
    ConfigFile(String),
    /// An invalid command line, or `--help` or `--version`: show it with
    /// [`clap::Error::exit`].
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
}

impl<T: CommandFactory + FromArgMatches> CommandLine<T> {
    /// Reads `args` (the program name first) with the config file of
    /// `--config` or `NCPS_CONFIG_FILE`, if any.
    pub fn parse(args: &[OsString]) -> Result<Self, ParseError> {
        let file = match config_file::path_from_args(args) {
            Some(path) => config_file::read(path.as_ref()).map_err(ParseError::ConfigFile)?,
            None => ConfigValues::default(),
        };
        // The first value of a key wins; the environment wins over all.
        let mut values = BTreeMap::new();
        for (env, value) in file.values {
            if std::env::var_os(env).is_none() {
                values.entry(env).or_insert(value);
            }
        }
        let mut command = with_file_defaults(T::command(), &values);
        let matches = command.try_get_matches_from_mut(args)?;
        let parsed = T::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
        Ok(CommandLine {
            parsed,
            matches,
            command,
            from_file: values.into_keys().map(str::to_owned).collect(),
            unknown_keys: file.unknown_keys,
        })
    }
}

/// `command` with `values` (by environment variable) as the defaults of
/// the options of those variables, in every subcommand.
fn with_file_defaults(command: Command, values: &BTreeMap<&str, String>) -> Command {
    if values.is_empty() {
        return command;
    }
    command
        .mut_args(|arg| {
            let env = arg.get_env().and_then(|e| e.to_str()).map(str::to_owned);
            match env.as_deref().and_then(|env| values.get(env)) {
                Some(value) => file_default(arg, value),
                None => arg,
            }
        })
        .mut_subcommands(|sub| with_file_defaults(sub, values))
}

/// `arg` taking `value` when neither its flag nor its variable is given;
/// a required option is then satisfied, and a secret stays out of `--help`.
fn file_default(arg: Arg, value: &str) -> Arg {
    let secret = arg.is_hide_env_values_set();
    arg.default_value(value.to_owned())
        .required(false)
        .hide_default_value(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[arg(long, env = "NCPS_CONFIG_TEST_UNSET_ADDR", default_value = ":8501")]
        server_addr: String,
        #[arg(
            long = "url",
            env = "NCPS_CONFIG_TEST_UNSET_URLS",
            value_delimiter = ','
        )]
        urls: Vec<String>,
        #[command(subcommand)]
        command: Option<Sub>,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Migrate {
            #[arg(long, env = "NCPS_CONFIG_TEST_UNSET_ADDR")]
            database_url: String,
        },
    }

    #[test]
    fn file_values_are_defaults_in_every_subcommand() {
        let values = BTreeMap::from([
            ("NCPS_CONFIG_TEST_UNSET_ADDR", "127.0.0.1:9".to_owned()),
            (
                "NCPS_CONFIG_TEST_UNSET_URLS",
                "http://a,http://b".to_owned(),
            ),
        ]);
        let command = with_file_defaults(Cli::command(), &values);
        let matches = command.clone().try_get_matches_from(["x"]).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        assert_eq!(cli.server_addr, "127.0.0.1:9");
        assert_eq!(cli.urls, ["http://a", "http://b"]);
        let matches = command
            .clone()
            .try_get_matches_from(["x", "--server-addr", ":1", "migrate"])
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        assert_eq!(cli.server_addr, ":1");
        assert!(
            matches!(cli.command, Some(Sub::Migrate { database_url }) if database_url == "127.0.0.1:9")
        );
    }
}
