//! `ncps-cli stats`: what the cache holds (paths, NARs and bytes in
//! storage, pins) and its hit ratios as the servers counted them, per
//! upstream.

use std::collections::BTreeMap;

use ncps_config::Settings;
use ncps_config::byte_size::format_size;
use ncps_core::StoredNar;
use ncps_core::access_log::{COUNTERS_SINCE_CONFIG, counter};
use ncps_core::eviction;
use serde_json::{Value, json};

use crate::admin::{Failure, exit, open, print_json};

/// The upstream a NAR's URL belongs to: the longest configured upstream URL
/// it starts with, else its origin; uploads have none.
fn upstream_of(nar: &StoredNar, upstreams: &[String]) -> String {
    let Some(url) = &nar.upstream_url else {
        return "(uploads)".to_owned();
    };
    if let Some(base) = upstreams
        .iter()
        .filter(|u| url.starts_with(u.trim_end_matches('/')))
        .max_by_key(|u| u.len())
    {
        return base.trim_end_matches('/').to_owned();
    }
    match url::Url::parse(url) {
        Ok(parsed) => parsed.origin().ascii_serialization(),
        Err(_) => url.clone(),
    }
}

/// What `stats` says of one upstream.
#[derive(Debug, Default)]
struct UpstreamStats {
    /// Its NARs in storage, and their bytes.
    stored_nars: u64,
    stored_bytes: u64,
    /// Narinfos fetched from it.
    narinfo_fetches: i64,
    /// Its NARs served from storage, and asked for when not there.
    nar_hits: i64,
    nar_misses: i64,
    /// NAR downloads started from it, and the bytes stored of them.
    nar_fetches: i64,
    fetched_bytes: i64,
}

impl UpstreamStats {
    /// The counter of this upstream that `name` (`<prefix><url>`) adds to.
    fn counter(&mut self, prefix: &str) -> Option<&mut i64> {
        match prefix {
            counter::NARINFO_FETCHES_FROM => Some(&mut self.narinfo_fetches),
            counter::NAR_HITS_FROM => Some(&mut self.nar_hits),
            counter::NAR_MISSES_FROM => Some(&mut self.nar_misses),
            counter::NAR_FETCHES_FROM => Some(&mut self.nar_fetches),
            counter::NAR_FETCHED_BYTES_FROM => Some(&mut self.fetched_bytes),
            _ => None,
        }
    }
}

/// The per-upstream counter prefixes.
const UPSTREAM_COUNTERS: [&str; 5] = [
    counter::NARINFO_FETCHES_FROM,
    counter::NAR_HITS_FROM,
    counter::NAR_MISSES_FROM,
    counter::NAR_FETCHES_FROM,
    counter::NAR_FETCHED_BYTES_FROM,
];

/// Prints the stats of the cache `settings` name.
pub(crate) async fn stats(settings: &Settings, json: bool) -> Result<u8, Failure> {
    let backends = open(settings).await?;
    let db = backends.db.as_ref();
    eviction::reconcile_storage(&backends, settings.cache.download_lock_ttl).await?;
    let usage = db.storage_usage().await?;
    let counters: BTreeMap<String, i64> = db.list_counters().await?.into_iter().collect();
    let since = db
        .get_config(COUNTERS_SINCE_CONFIG)
        .await?
        .and_then(|s| s.parse::<i64>().ok());
    let count = |name: &str| counters.get(name).copied().unwrap_or(0);
    let ratio =
        |hits: i64, misses: i64| (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64);
    // Upstream URLs without their query (`?priority=`, `?public-key=`).
    let upstreams: Vec<String> = settings
        .upstreams
        .upstreams
        .iter()
        .map(|u| {
            let url = u.config.url.as_str();
            url.split('?').next().unwrap_or(url).to_owned()
        })
        .collect();

    // Per upstream: NARs and bytes in storage, and its counters.
    let mut per: BTreeMap<String, UpstreamStats> = BTreeMap::new();
    let mut after: Option<(i64, String)> = None;
    loop {
        let page = db
            .stored_nars_by_last_access(after.as_ref().map(|(a, f)| (*a, f.as_str())), 1000)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.last_accessed_at, last.file.clone()));
        for nar in &page {
            let entry = per.entry(upstream_of(nar, &upstreams)).or_default();
            entry.stored_nars += 1;
            entry.stored_bytes += nar.size;
        }
    }
    for (name, value) in &counters {
        for prefix in UPSTREAM_COUNTERS {
            let Some(url) = name.strip_prefix(prefix) else {
                continue;
            };
            let fake = StoredNar {
                file: String::new(),
                size: 0,
                last_accessed_at: 0,
                upstream_url: Some(url.to_owned()),
            };
            let entry = per.entry(upstream_of(&fake, &upstreams)).or_default();
            if let Some(count) = entry.counter(prefix) {
                *count += value;
            }
        }
    }

    let narinfo = (count(counter::NARINFO_HITS), count(counter::NARINFO_MISSES));
    let nar = (count(counter::NAR_HITS), count(counter::NAR_MISSES));
    if json {
        let upstream_list: Vec<Value> = per
            .iter()
            .map(|(name, u)| {
                json!({
                    "upstream": name,
                    "storedNars": u.stored_nars,
                    "storedBytes": u.stored_bytes,
                    "narinfoFetches": u.narinfo_fetches,
                    "narHits": u.nar_hits,
                    "narMisses": u.nar_misses,
                    "narHitRatio": ratio(u.nar_hits, u.nar_misses),
                    "narFetches": u.nar_fetches,
                    "fetchedBytes": u.fetched_bytes,
                })
            })
            .collect();
        print_json(&json!({
            "paths": usage.narinfos,
            "narRecords": usage.nar_records,
            "storedNars": usage.stored_nars,
            "storedBytes": usage.stored_bytes,
            "unknownStorage": usage.unknown_nars,
            "maxSize": settings.cache.max_size,
            "pins": usage.pins,
            "countersSince": since,
            "narinfo": {"hits": narinfo.0, "misses": narinfo.1, "absent": count(counter::NARINFO_ABSENT), "hitRatio": ratio(narinfo.0, narinfo.1)},
            "nar": {"hits": nar.0, "misses": nar.1, "hitRatio": ratio(nar.0, nar.1)},
            "evicted": {"nars": count(counter::EVICTED_NARS), "bytes": count(counter::EVICTED_BYTES)},
            "uploadedNars": count(counter::UPLOADED_NARS),
            "upstreams": upstream_list,
        }));
        return Ok(exit::OK);
    }
    let percent = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0));
    println!("paths (narinfos):   {}", usage.narinfos);
    let limit = settings
        .cache
        .max_size
        .map(|m| format!(" of {} (--cache-max-size)", format_size(m)))
        .unwrap_or_default();
    println!(
        "NARs in storage:    {} ({}{limit})",
        usage.stored_nars,
        format_size(usage.stored_bytes)
    );
    println!(
        "NAR records:        {} ({} not downloaded, {} of unknown storage)",
        usage.nar_records,
        usage
            .nar_records
            .saturating_sub(usage.stored_nars + usage.unknown_nars),
        usage.unknown_nars
    );
    println!("pinned paths:       {}", usage.pins);
    match since {
        Some(since) => println!("counted since:      {since} (seconds since the epoch)"),
        None => println!("counted since:      (no server has counted yet)"),
    }
    println!(
        "narinfo hit ratio:  {} ({} hits, {} from upstreams, {} in no upstream)",
        percent(ratio(narinfo.0, narinfo.1)),
        narinfo.0,
        narinfo.1,
        count(counter::NARINFO_ABSENT)
    );
    println!(
        "NAR hit ratio:      {} ({} hits, {} misses)",
        percent(ratio(nar.0, nar.1)),
        nar.0,
        nar.1
    );
    println!(
        "evicted:            {} NARs ({})",
        count(counter::EVICTED_NARS),
        format_size(u64::try_from(count(counter::EVICTED_BYTES)).unwrap_or(0))
    );
    println!("uploaded NARs:      {}", count(counter::UPLOADED_NARS));
    println!("per upstream:");
    if per.is_empty() {
        println!("  (nothing stored)");
    }
    for (name, u) in &per {
        println!("  {name}:");
        println!(
            "    in storage:     {} NARs ({})",
            u.stored_nars,
            format_size(u.stored_bytes)
        );
        println!("    narinfos:       {} fetched", u.narinfo_fetches);
        println!(
            "    NAR hit ratio:  {} ({} hits, {} misses)",
            percent(ratio(u.nar_hits, u.nar_misses)),
            u.nar_hits,
            u.nar_misses
        );
        println!(
            "    downloaded:     {} NARs ({})",
            u.nar_fetches,
            format_size(u64::try_from(u.fetched_bytes).unwrap_or(0))
        );
    }
    Ok(exit::OK)
}
