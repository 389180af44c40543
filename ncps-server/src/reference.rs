//! The configuration reference (`docs/configuration.md`), generated from
//! the command line definition so it cannot drift from it: every option's
//! flag, environment variable, config file key, default and help.
//!
//! `cargo test -p ncps-server --test config_reference` fails when the file
//! differs from [`markdown`]; `NCPS_BLESS=1` rewrites it.

use std::fmt::Write as _;

use clap::{Arg, CommandFactory};

use crate::options::Cli;
use ncps_config::config_file::KEYS;

/// The config file key of the option read from `env`, if it has one.
pub fn config_key(env: &str) -> Option<&'static str> {
    KEYS.iter().find(|(_, e)| *e == env).map(|(key, _)| *key)
}

/// Every documented option of `ncps-server` (help and version left out).
pub fn options() -> Vec<Arg> {
    Cli::command()
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !matches!(a.get_id().as_str(), "help" | "version"))
        .cloned()
        .collect()
}

/// Markdown table cell text: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn row(out: &mut String, arg: &Arg) {
    let flag = format!("`--{}`", arg.get_long().unwrap_or_default());
    let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
    let key = env.as_deref().and_then(config_key);
    let code = |s: &str| format!("`{s}`");
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let default = if defaults.is_empty() {
        String::new()
    } else {
        code(&defaults.join(","))
    };
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut help = cell(&help);
    // clap drops the doc comment's final period.
    if !help.is_empty() && !help.ends_with('.') {
        help.push('.');
    }
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| code(v.get_name()))
        .collect();
    // Booleans list true/false as possible values: say nothing about them.
    if !values.is_empty() && values != ["`true`", "`false`"] {
        let _ = write!(help, " One of: {}.", values.join(", "));
    }
    if arg.is_hide_env_values_set() {
        help.push_str(" Secret: never shown in `--help`, logs or `--check-config`.");
    }
    let _ = writeln!(
        out,
        "| {flag} | {} | {} | {default} | {help} |",
        env.as_deref().map(code).unwrap_or_default(),
        key.map(code).unwrap_or_default(),
    );
}

/// `docs/configuration.md`.
pub fn markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\
         \n\
         <!-- Generated from ncps-server's command line definition by\n\
         `ncps_server::reference::markdown()`; do not edit. Regenerate with\n\
         `NCPS_BLESS=1 cargo test -p ncps-server --test config_reference`. -->\n\
         \n\
         Every option of `ncps-server` (and `ncps-server serve`) has a flag, most\n\
         have an environment variable and a key in the config file given with\n\
         `--config` (YAML, TOML or JSON; `server.addr` is `server: {addr: ...}` in\n\
         YAML, `[server] addr = ...` in TOML). A flag wins over the environment,\n\
         which wins over the file, which wins over the default. Lists (upstream\n\
         URLs and keys, Redis addresses) are repeated flags, comma-separated in\n\
         the environment, and arrays in the file. Durations are Go-style: `3s`,\n\
         `5m`, `1h30m`. Booleans take `true` or `false` (`--flag` alone is\n\
         `true`).\n\
         \n\
         `ncps-server --check-config` checks a configuration without starting\n\
         (and without contacting the database, S3, Redis or upstreams) and\n\
         prints each option's effective value and where it came from, secrets\n\
         hidden.\n\
         \n",
    );
    let args = options();
    let header =
        "| flag | environment | config key | default | description |\n|---|---|---|---|---|\n";
    out.push_str("## Global options\n\nValid before and after `serve`.\n\n");
    out.push_str(header);
    for arg in args.iter().filter(|a| a.is_global_set()) {
        row(&mut out, arg);
    }
    out.push_str("\n## serve options\n\n");
    out.push_str(header);
    for arg in args.iter().filter(|a| !a.is_global_set()) {
        row(&mut out, arg);
    }
    out
}
