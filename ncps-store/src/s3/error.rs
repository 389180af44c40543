//! Turning aws-sdk-s3 errors into [`ncps_core::Error`]: network trouble and
//! server-side failures become `Unavailable` (retry later), the rest a
//! backend error with its source.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use ncps_core::Error;

/// The HTTP status of the response behind `err`, if there was one.
pub(crate) fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Maps an SDK error met while doing `context`.
pub(crate) fn map_sdk_error<E>(context: impl Into<String>, err: SdkError<E, HttpResponse>) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let context = context.into();
    if is_unavailable(&err) {
        Error::Unavailable(format!("{context}: {}", describe(&err)))
    } else {
        Error::backend(context, describe(&err))
    }
}

/// `err` and its sources on one line, `a: b: c`; the SDK's own `Display`
/// says only "service error" or "dispatch failure".
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Whether `err` means S3 cannot answer now: no connection, a timeout, a
/// broken response, or a 5xx (including 503 SlowDown).
pub(crate) fn is_unavailable<E>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::DispatchFailure(failure) => failure.is_io() || failure.is_timeout(),
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(_) => status(err).is_some_and(|s| s >= 500),
        _ => false,
    }
}
