//! ncps-server against nginx serving the same binary cache, in one run.
//!
//! Makes a synthetic closure as a real binary cache (signed narinfos,
//! uncompressed NARs of one regular file each), serves it statically with
//! nginx, and runs a release `ncps-server` proxying it. Then, alternating the
//! two servers each round, it measures:
//!
//! - (a) every narinfo fetched in turn over one keep-alive connection, the
//!   whole list [`NARINFO_PASSES`] times (one pass takes only tens of
//!   milliseconds, which a scheduling hiccup would swing);
//! - (b) every NAR downloaded over one connection;
//! - (c) every NAR downloaded over 4 connections;
//! - (d) a cold pass (narinfo + NAR of every path) through an empty proxy,
//!   against the same pass straight from the upstream;
//! - (d') the same cold pass with a client that checks every NAR's hash, as
//!   Nix does, both through the proxy and straight from the upstream (not a
//!   target of its own: what a Nix client sees when the proxy's own check
//!   runs beside the client's);
//!
//! and prints each median, the ratio ncps-server / nginx, the server's peak
//! RSS, and how many upstream fetches 200 concurrent clients asking for one
//! uncached NAR caused. Run it with `benches/vs-nginx.sh`; `--warm-only`
//! measures (a) to (c) alone.

mod cache;
mod client;
mod servers;

use std::path::PathBuf;
use std::time::Duration;

use cache::Cache;
use servers::{Nginx, Proxy};

/// How many times (a) fetches the whole list of narinfos.
const NARINFO_PASSES: usize = 5;

/// What the command line says.
struct Args {
    server: PathBuf,
    paths: usize,
    total_mib: u64,
    rounds: usize,
    /// Only (a) to (c): no cold passes, no herd.
    warm_only: bool,
}

fn args() -> Args {
    let mut args = Args {
        server: PathBuf::from("target/release/ncps-server"),
        paths: 300,
        total_mib: 500,
        rounds: 3,
        warm_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--server" => args.server = value().into(),
            "--paths" => args.paths = value().parse().expect("--paths N"),
            "--total-mib" => args.total_mib = value().parse().expect("--total-mib N"),
            "--rounds" => args.rounds = value().parse().expect("--rounds N"),
            "--warm-only" => args.warm_only = true,
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// The median of some durations.
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// One line of the result table.
fn report(what: &str, ncps: Duration, nginx: Duration, target: f64) {
    let ratio = ncps.as_secs_f64() / nginx.as_secs_f64();
    let verdict = if ratio <= target { "ok" } else { "MISSED" };
    println!(
        "{what:<44} ncps {:>9.3} s   nginx {:>9.3} s   ratio {ratio:>5.2}x  (target <= {target:.2}x: {verdict})",
        ncps.as_secs_f64(),
        nginx.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() {
    let args = args();
    let work = tempfile::Builder::new()
        .prefix("ncps-vs-nginx-")
        .tempdir()
        .expect("temp dir");
    eprintln!(
        "making {} paths, about {} MiB, in {}",
        args.paths,
        args.total_mib,
        work.path().display()
    );
    let cache = Cache::generate(&work.path().join("cache"), args.paths, args.total_mib << 20);
    eprintln!(
        "made {} paths, {} bytes of NARs ({} to {} bytes each)",
        cache.paths.len(),
        cache.total_bytes(),
        cache.paths.iter().map(|p| p.nar_size).min().unwrap_or(0),
        cache.paths.iter().map(|p| p.nar_size).max().unwrap_or(0)
    );
    let nginx = Nginx::start(work.path(), &cache.root);
    let mut proxy = Proxy::start(
        &args.server,
        work.path(),
        "warm",
        &nginx.url,
        &cache.public_key,
    );

    // Warm the proxy with one full pass, checking every byte once.
    client::pass(&proxy.url, &cache, true).await;
    let narinfos = cache.narinfo_urls();
    let narinfos: Vec<String> = (0..NARINFO_PASSES).flat_map(|_| narinfos.clone()).collect();
    let nars = cache.nar_urls();

    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Who goes first alternates too, so neither always follows the other.
        let mut order = [(&nginx.url, "nginx"), (&proxy.url, "ncps")];
        if round % 2 == 1 {
            order.reverse();
        }
        for (base, name) in order {
            let narinfo = client::sequential(base, &narinfos).await;
            let nar1 = client::parallel(base, &nars, 1).await;
            let nar4 = client::parallel(base, &nars, 4).await;
            a.push((name, narinfo));
            b.push((name, nar1));
            c.push((name, nar4));
        }
        let last = |v: &[(&str, Duration)]| {
            let ncps = v.iter().rev().find(|(n, _)| *n == "ncps").unwrap().1;
            let nginx = v.iter().rev().find(|(n, _)| *n == "nginx").unwrap().1;
            ncps.as_secs_f64() / nginx.as_secs_f64()
        };
        eprintln!(
            "round {} of {}: ncps/nginx (a) {:.2}x (b) {:.2}x (c) {:.2}x",
            round + 1,
            args.rounds,
            last(&a),
            last(&b),
            last(&c)
        );
    }
    let pick = |v: &[(&str, Duration)], who: &str| {
        median(
            v.iter()
                .filter(|(n, _)| *n == who)
                .map(|(_, d)| *d)
                .collect(),
        )
    };

    let cold = if args.warm_only {
        None
    } else {
        Some(cold_and_herd(&args, work.path(), &nginx, &cache).await)
    };

    let warm_rss = proxy.peak_rss_kib();
    proxy.stop();

    println!();
    println!(
        "ncps-server vs nginx: {} paths, {} bytes, median of {} rounds, alternating servers",
        cache.paths.len(),
        cache.total_bytes(),
        args.rounds
    );
    report(
        &format!("(a) narinfos x{NARINFO_PASSES}, sequential, 1 connection"),
        pick(&a, "ncps"),
        pick(&a, "nginx"),
        1.0,
    );
    report(
        "(b) NARs, 1 connection",
        pick(&b, "ncps"),
        pick(&b, "nginx"),
        1.0,
    );
    report(
        "(c) NARs, 4 connections",
        pick(&c, "ncps"),
        pick(&c, "nginx"),
        1.1,
    );
    if let Some(cold) = &cold {
        report(
            "(d) cold pass via empty proxy vs direct",
            median(cold.cold.clone()),
            median(cold.direct.clone()),
            1.15,
        );
        report(
            "(d') the same, the client checking NarHash",
            median(cold.cold_checked.clone()),
            median(cold.direct_checked.clone()),
            1.15,
        );
    }
    let cold_rss = cold
        .as_ref()
        .map_or("not run".into(), |c| format!("{} MiB", c.rss_kib / 1024));
    println!(
        "peak RSS: warm proxy {} MiB, cold proxies {cold_rss} (target <= 100 MiB)",
        warm_rss / 1024,
    );
    if let Some(cold) = cold {
        println!(
            "200 concurrent clients, one uncached NAR ({} bytes): {} complete and correct, {} upstream fetch(es) (target 1)",
            cold.herd_size, cold.herd_right, cold.herd_fetches
        );
    }
}

/// What (d), (d') and the herd measured.
struct Cold {
    cold: Vec<Duration>,
    direct: Vec<Duration>,
    cold_checked: Vec<Duration>,
    direct_checked: Vec<Duration>,
    rss_kib: u64,
    herd_size: u64,
    herd_right: usize,
    herd_fetches: usize,
}

/// (d) and (d'): cold passes, each through a fresh proxy, against the
/// upstream directly; then 200 clients at once asking one uncached NAR of a
/// fresh proxy.
async fn cold_and_herd(args: &Args, work: &std::path::Path, nginx: &Nginx, cache: &Cache) -> Cold {
    let mut cold = Vec::new();
    let mut direct = Vec::new();
    let (mut cold_checked, mut direct_checked) = (Vec::new(), Vec::new());
    let mut cold_rss = 0;
    for round in 0..args.rounds {
        for (verify, cold, direct) in [
            (false, &mut cold, &mut direct),
            (true, &mut cold_checked, &mut direct_checked),
        ] {
            direct.push(client::pass(&nginx.url, cache, verify).await);
            let fresh = Proxy::start(
                &args.server,
                work,
                &format!("cold-{round}-{verify}"),
                &nginx.url,
                &cache.public_key,
            );
            cold.push(client::pass(&fresh.url, cache, verify).await);
            cold_rss = cold_rss.max(fresh.peak_rss_kib());
        }
    }
    let herd = Proxy::start(&args.server, work, "herd", &nginx.url, &cache.public_key);
    let big = cache.largest();
    let before = nginx.hits(&big.nar_url);
    let herd_right = client::herd(&herd.url, big, 200).await;
    let herd_fetches = nginx.hits(&big.nar_url) - before;
    Cold {
        cold,
        direct,
        cold_checked,
        direct_checked,
        rss_kib: cold_rss,
        herd_size: big.nar_size,
        herd_right,
        herd_fetches,
    }
}
