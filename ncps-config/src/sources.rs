//! Where each option's effective value came from (flag, environment,
//! config file or default), with secrets hidden: what `--check-config`
//! prints, and nothing else may print option values.

use std::collections::BTreeSet;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

use crate::config_file::KEYS;

/// What secret values are shown as.
pub const HIDDEN: &str = "<hidden>";

/// One option's effective value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveValue {
    /// `--flag`.
    pub flag: String,
    /// The value as shown (secrets hidden), or `None` when unset.
    pub value: Option<String>,
    /// `flag`, `env VAR`, `file KEY`, `default`, `computed default` (what
    /// the settings work out), or empty when unset.
    pub source: String,
}

/// The effective value of every option of `command` (its own and global
/// ones; help, version and `--check-config` left out), read from `matches`
/// or, for options of the subcommand used, from its matches. `from_file`
/// are the environment variables whose options took the config file's value.
pub fn effective_values(
    command: &Command,
    matches: &ArgMatches,
    from_file: &BTreeSet<String>,
) -> Vec<EffectiveValue> {
    let sub = matches.subcommand().map(|(_, sub)| sub);
    let mut values = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "check_config") {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        let m = match sub {
            Some(sub) if sub.try_contains_id(id).unwrap_or(false) => sub,
            _ => matches,
        };
        let raw: Option<Vec<String>> = m.get_raw(id).map(|values| {
            values
                .map(|v| shown(&v.to_string_lossy()))
                .collect::<Vec<_>>()
        });
        let value = match raw {
            Some(_) if is_secret(arg) => Some(HIDDEN.to_owned()),
            Some(values) if values.is_empty() => None,
            Some(values) => Some(values.join(",")),
            None => None,
        };
        values.push(EffectiveValue {
            flag: format!("--{long}"),
            value,
            source: source(arg, m.value_source(id), from_file),
        });
    }
    values
}

/// Where the value of `arg` came from, as [`EffectiveValue::source`] says it.
fn source(arg: &Arg, source: Option<ValueSource>, from_file: &BTreeSet<String>) -> String {
    let env = arg
        .get_env()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    match source {
        Some(ValueSource::CommandLine) => "flag".to_owned(),
        Some(ValueSource::EnvVariable) => format!("env {env}"),
        Some(ValueSource::DefaultValue) if from_file.contains(&env) => {
            match KEYS.iter().find(|(_, e)| *e == env) {
                Some((key, _)) => format!("file {key}"),
                None => "default".to_owned(),
            }
        }
        Some(ValueSource::DefaultValue) => "default".to_owned(),
        _ => String::new(),
    }
}

/// Whether the option holds a secret.
fn is_secret(arg: &Arg) -> bool {
    arg.is_hide_env_values_set() || is_secret_name(arg.get_id().as_str())
}

/// A value as printed: URLs with their password, and query parameters
/// named like secrets, hidden.
fn shown(value: &str) -> String {
    if !value.contains("://") {
        return value.to_owned();
    }
    let redacted = ncps_db::redact_url(value);
    let Some((base, query)) = redacted.split_once('?') else {
        return redacted;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_name(&key.to_ascii_lowercase()) => {
                format!("{key}={HIDDEN}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Whether an option or parameter name says it holds a secret.
fn is_secret_name(name: &str) -> bool {
    ["password", "secret", "token"]
        .iter()
        .any(|word| name.contains(word))
        && !name.ends_with("file")
        && !name.ends_with("path")
}
