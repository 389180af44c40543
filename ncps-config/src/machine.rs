//! What the defaults of a few options depend on: this machine's hostname
//! (`--cache-hostname`), the user's data directory (`--cache-storage-local`,
//! and so the SQLite database), home directory (`~/.netrc`) and temporary
//! directory (`--cache-temp-path`). [`Machine::detect`] reads them once, so
//! turning options into [`Settings`](crate::Settings) reads nothing.

use std::path::PathBuf;

/// The machine-dependent defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// The machine's hostname, the default `--cache-hostname`.
    pub hostname: String,
    /// `$XDG_DATA_HOME/ncps`, else `~/.local/share/ncps`, else `ncps-data`:
    /// the default `--cache-storage-local`.
    pub data_dir: PathBuf,
    /// `$HOME`, where the default netrc file is.
    pub home: Option<PathBuf>,
    /// The OS temporary directory, the default `--cache-temp-path`.
    pub temp_dir: PathBuf,
}

impl Machine {
    /// Reads the hostname (`/proc/sys/kernel/hostname`, else
    /// `/etc/hostname`, else `ncps`) and the environment.
    pub fn detect() -> Machine {
        Machine {
            hostname: machine_hostname(),
            data_dir: default_data_dir(),
            home: std::env::var_os("HOME").map(PathBuf::from),
            temp_dir: std::env::temp_dir(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ncps");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/ncps"),
        None => PathBuf::from("ncps-data"),
    }
}

fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ncps".to_owned())
}
