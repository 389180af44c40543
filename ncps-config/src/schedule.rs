//! When eviction runs: `--cache-lru-schedule`, a cron spec (or an
//! interval) in a time zone, parsed, and the time until its next run.

use std::time::Duration;

use chrono::{DateTime, Local, TimeZone, Utc};
use croner::Cron;

/// The schedule when `--cache-max-size` is given without one: hourly.
pub const DEFAULT_SCHEDULE: &str = "@hourly";

/// A parsed `--cache-lru-schedule`.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// A cron spec, in local time or UTC.
    Cron {
        /// The spec.
        cron: Box<Cron>,
        /// Whether it is in UTC (else the machine's time zone).
        utc: bool,
    },
    /// `@every <duration>`: at a fixed interval from start.
    Every(Duration),
}

impl Schedule {
    /// Parses a spec (5 fields, or 6 with seconds first; `@hourly`,
    /// `@daily`, ...; `@every 30m`) in time zone `tz` (`Local` or `UTC`).
    pub fn parse(spec: &str, tz: &str) -> Result<Schedule, String> {
        let utc = match tz.to_ascii_lowercase().as_str() {
            "local" | "" => false,
            "utc" | "etc/utc" | "z" => true,
            _ => {
                return Err(format!(
                    "--cache-lru-schedule-timezone: {tz:?}: only Local and UTC are supported"
                ));
            }
        };
        if let Some(every) = spec.trim().strip_prefix("@every") {
            let every = humantime::parse_duration(every.trim())
                .map_err(|e| format!("--cache-lru-schedule: {spec:?}: {e}"))?;
            if every.is_zero() {
                return Err(format!(
                    "--cache-lru-schedule: {spec:?}: the interval is zero"
                ));
            }
            return Ok(Schedule::Every(every));
        }
        let cron = Cron::new(spec.trim())
            .with_seconds_optional()
            .parse()
            .map_err(|e| format!("--cache-lru-schedule: {spec:?}: {e}"))?;
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            utc,
        })
    }

    /// How long from now until the next run.
    pub fn until_next(&self) -> Option<Duration> {
        match self {
            Schedule::Every(every) => Some(*every),
            Schedule::Cron { cron, utc: true } => until(cron, Utc::now()),
            Schedule::Cron { cron, utc: false } => until(cron, Local::now()),
        }
    }
}

fn until<Tz: TimeZone>(cron: &Cron, now: DateTime<Tz>) -> Option<Duration> {
    let next = cron.find_next_occurrence(&now, false).ok()?;
    (next - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cron_specs_and_intervals() {
        for spec in ["0 2 * * *", "*/5 * * * * *", "@hourly", "@daily"] {
            let schedule = Schedule::parse(spec, "Local").unwrap();
            assert!(schedule.until_next().is_some(), "{spec}");
        }
        let every = Schedule::parse("@every 90s", "UTC").unwrap();
        assert_eq!(every.until_next(), Some(Duration::from_secs(90)));
        let each_second = Schedule::parse("* * * * * *", "UTC").unwrap();
        assert!(each_second.until_next().unwrap() <= Duration::from_secs(1));
        for bad in ["", "bad", "61 * * * *", "@every soon", "@every 0s"] {
            let e = Schedule::parse(bad, "UTC").unwrap_err();
            assert!(e.contains("--cache-lru-schedule"), "{bad}: {e}");
        }
        assert!(Schedule::parse("@hourly", "Europe/Paris").is_err());
    }
}
