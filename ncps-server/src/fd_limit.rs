//! Raises the soft limit on open files to the hard limit at start, as Go
//! programs (ncps among them) do since Go 1.19. systemd starts services
//! with a soft limit of 1024 and a hard one of 524288; every connection,
//! upstream download and kept-open NAR file takes a descriptor, so 1024
//! would cap a busy cache well below what the host allows.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Sets the soft `RLIMIT_NOFILE` to the hard one and returns the soft limit
/// now in force (`None`: unlimited). Call it before the storage is made:
/// local storage sizes its open-file cache from it.
pub fn raise() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return raised.current;
        }
    }
    limit.current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let hard = getrlimit(Resource::Nofile).maximum;
        // Start below the hard limit, as under systemd (lowering is allowed).
        let lowered = Rlimit {
            current: Some(hard.unwrap_or(4096).min(4096) / 2),
            maximum: hard,
        };
        setrlimit(Resource::Nofile, lowered).unwrap();
        assert!(getrlimit(Resource::Nofile).current < hard.or(Some(u64::MAX)));
        assert_eq!(raise(), hard);
        assert_eq!(getrlimit(Resource::Nofile).current, hard);
    }
}
