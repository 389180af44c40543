//! Credentials from a netrc file (`machine HOST login USER password PASS`),
//! as curl and Nix read them for private binary caches.

use std::path::Path;

use crate::{Error, Result};

/// A login for one host.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name.
    pub login: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(f, "Login({}, <password>)", self.login)
    }
}

/// The entries of a netrc file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Netrc {
    machines: Vec<(String, Login)>,
    default: Option<Login>,
}

impl Netrc {
    /// Reads a netrc file. Errors name the file, never its content.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidInput(format!("netrc file {}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|e| Error::InvalidInput(format!("netrc file {}: {e}", path.display())))
    }

    /// Parses netrc text: tokens separated by white space; `macdef` blocks are skipped.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut netrc = Netrc::default();
        let mut lines = text.lines();
        let mut tokens: Vec<&str> = Vec::new();
        while let Some(line) = lines.next() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&"macdef") {
                // A macro runs to the next empty line.
                for line in lines.by_ref() {
                    if line.trim().is_empty() {
                        break;
                    }
                }
                continue;
            }
            tokens.extend(words);
        }
        let mut iter = tokens.into_iter().peekable();
        while let Some(token) = iter.next() {
            let host = match token {
                "machine" => Some(iter.next().ok_or("`machine` without a host")?.to_owned()),
                "default" => None,
                other => return Err(format!("unexpected token {other:?}")),
            };
            let (mut login, mut password) = (String::new(), String::new());
            while let Some(&key) = iter.peek() {
                if key == "machine" || key == "default" {
                    break;
                }
                iter.next();
                let value = iter
                    .next()
                    .ok_or_else(|| format!("`{key}` without a value"))?;
                match key {
                    "login" => login = value.to_owned(),
                    "password" => password = value.to_owned(),
                    "account" => {}
                    other => return Err(format!("unknown netrc keyword {other:?}")),
                }
            }
            let entry = Login { login, password };
            match host {
                Some(host) => netrc.machines.push((host, entry)),
                None => netrc.default = Some(entry),
            }
        }
        Ok(netrc)
    }

    /// The login for `host`, or the default one.
    pub fn login_for(&self, host: &str) -> Option<&Login> {
        self.machines
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(host))
            .map(|(_, l)| l)
            .or(self.default.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_machines_and_the_default() {
        let netrc = Netrc::parse(
            "machine cache.example.org\n  login alice\n  password s3cret\n\nmacdef init\nls\n\nmachine other login bob password pw account x\ndefault login anon password guest\n",
        )
        .unwrap();
        let alice = netrc.login_for("CACHE.example.org").unwrap();
        assert_eq!(
            (alice.login.as_str(), alice.password.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(netrc.login_for("other").unwrap().login, "bob");
        assert_eq!(netrc.login_for("elsewhere").unwrap().login, "anon");
        assert!(!format!("{alice:?}").contains("s3cret"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Netrc::parse("machine").is_err());
        assert!(Netrc::parse("machine a login").is_err());
        assert!(Netrc::parse("hello world").is_err());
        assert!(Netrc::parse("machine a frobnicate 1").is_err());
    }
}
