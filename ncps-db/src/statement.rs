//! Running one statement for a [`crate::SqlDb`] call, the same way on every
//! backend: a connection from the engine, the engine's statement timeout
//! (a connection that does not answer in time is discarded and the database
//! counts as unavailable), retries while the server reports a deadlock, and
//! the driver's error turned into an [`ncps_core::Error`] naming what was
//! being done.

use ncps_core::Result;

use crate::engine::{Answer, Connection, Engine};
use crate::fault::Fault;
use crate::values::Value;

/// Runs `sql` with `params` on a connection of `engine`, the database shown
/// as `url` in messages (`None` for a local file), while doing `context`.
pub(crate) async fn run<E: Engine>(
    engine: &E,
    url: Option<&str>,
    context: &str,
    sql: &str,
    params: &[Value],
) -> Result<Answer> {
    let error = |fault: Fault| fault.into_error(context, url);
    let mut attempt = 1;
    loop {
        let mut conn = engine.conn().await.map_err(error)?;
        let answered = match E::STATEMENT_TIMEOUT {
            None => conn.run(sql, params).await,
            Some(limit) => match tokio::time::timeout(limit, conn.run(sql, params)).await {
                Ok(answered) => answered,
                Err(_) => {
                    E::discard(conn);
                    let why = format!("no answer within {limit:?}");
                    return Err(error(Fault::new(crate::fault::FaultKind::Unavailable, why)));
                }
            },
        };
        match answered {
            Err(fault) if fault.is_retryable() && attempt < E::ATTEMPTS => attempt += 1,
            answered => return answered.map_err(error),
        }
    }
}
