//! The one shape of a settings error: [`ncps_core::Error::InvalidInput`]
//! naming the option that is wrong, so the binaries can say which to fix.

use ncps_core::Error;

/// An invalid-option error naming the option, without repeating "invalid input".
pub fn invalid(option: &str, cause: impl std::fmt::Display) -> Error {
    let cause = cause.to_string();
    let cause = cause.strip_prefix("invalid input: ").unwrap_or(&cause);
    Error::InvalidInput(format!("{option}: {cause}"))
}
