//! `nix-cache-info`: what a binary cache says about itself.

use std::fmt;
use std::str::FromStr;

use crate::store_path::STORE_DIR;
use crate::{Error, Result};

/// The content of `/nix-cache-info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheInfo {
    /// `StoreDir:`, normally `/nix/store`.
    pub store_dir: String,
    /// `WantMassQuery:`
    pub want_mass_query: bool,
    /// `Priority:`; lower is preferred.
    pub priority: Option<u32>,
}

impl Default for CacheInfo {
    fn default() -> Self {
        CacheInfo {
            store_dir: STORE_DIR.into(),
            want_mass_query: true,
            priority: None,
        }
    }
}

impl FromStr for CacheInfo {
    type Err = Error;

    /// Parses `Key: value` lines; unknown keys are ignored, as Nix does.
    fn from_str(text: &str) -> Result<Self> {
        let mut info = CacheInfo {
            want_mass_query: false,
            ..CacheInfo::default()
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "StoreDir" => info.store_dir = value.to_owned(),
                "WantMassQuery" => info.want_mass_query = value == "1",
                "Priority" => {
                    info.priority = Some(value.parse().map_err(|_| {
                        Error::InvalidInput(format!(
                            "nix-cache-info: Priority {value:?} is not a number"
                        ))
                    })?)
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

impl fmt::Display for CacheInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StoreDir: {}", self.store_dir)?;
        writeln!(f, "WantMassQuery: {}", u8::from(self.want_mass_query))?;
        if let Some(p) = self.priority {
            writeln!(f, "Priority: {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes() {
        let info: CacheInfo = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\nFoo: bar\n"
            .parse()
            .unwrap();
        assert_eq!(info.priority, Some(40));
        assert!(info.want_mass_query);
        assert_eq!(
            info.to_string(),
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
        );
        assert!("Priority: high".parse::<CacheInfo>().is_err());
    }
}
