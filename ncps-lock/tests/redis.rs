//! `RedisLock` against a real Redis (`.ci/redis.sh` starts one), found
//! through `NCPS_TEST_REDIS_URL` (`redis://host:port`), and a Redis Cluster
//! through `NCPS_TEST_REDIS_CLUSTER_ADDRS` (`host:port,host:port,...`).
//! Without them those tests skip loudly; with `NCPS_TEST_REQUIRE_ALL=1` they
//! fail instead. Every test keeps its keys under a prefix of its own run, so
//! runs never see each other's locks. The unreachable-Redis tests need no
//! Redis.

#[cfg(not(feature = "redis"))]
#[test]
fn redis_tests_need_the_redis_feature() {
    let why = "Redis lock tests: ncps-lock was built without the `redis` feature";
    if ncps_core::testkit::require_all() {
        panic!("{why}, and NCPS_TEST_REQUIRE_ALL=1");
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED: {why}\n").as_bytes(),
    );
}

#[cfg(feature = "redis")]
mod redis {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use deadpool_redis::redis::{self, AsyncConnectionConfig, aio::MultiplexedConnection};
    use ncps_core::{Error, Lock};
    use ncps_lock::{DegradableLock, RedisLock, RedisLockOptions, RetryPolicy};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;
    use tokio::time::timeout;

    /// How to start the services the tests need.
    const START: &str = "source .ci/redis.sh";

    /// Set in a child process of this test binary to the part it plays.
    const CHILD_ROLE: &str = "NCPS_TEST_REDIS_CHILD";
    /// The key prefix a child process shares with its parent.
    const CHILD_PREFIX: &str = "NCPS_TEST_REDIS_CHILD_PREFIX";

    /// How long anything that should be quick may take.
    const STEP: Duration = Duration::from_secs(10);

    /// The longest a lost Redis may take to answer `Unavailable` (the lock's
    /// bound is 5s; the rest is slack for a loaded machine).
    const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(8);

    /// The single server's `host:port`, or `None` (after saying so) to skip.
    fn redis_addr(test: &str) -> Option<String> {
        let url = ncps_core::testkit::service(test, "NCPS_TEST_REDIS_URL", START)?;
        let addr = url
            .strip_prefix("redis://")
            .unwrap_or(&url)
            .trim_end_matches('/');
        Some(addr.to_owned())
    }

    /// The cluster's addresses, or `None` (after saying so) to skip.
    fn cluster_addrs(test: &str) -> Option<Vec<String>> {
        let addrs = ncps_core::testkit::service(test, "NCPS_TEST_REDIS_CLUSTER_ADDRS", START)?;
        Some(addrs.split(',').map(str::to_owned).collect())
    }

    /// A key prefix no other test or run uses.
    fn fresh_prefix(test: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("ncps-test:{test}:{}:{nanos}:", std::process::id())
    }

    fn options(addrs: &[String], prefix: &str, label: Option<&str>) -> RedisLockOptions {
        RedisLockOptions {
            addrs: addrs.to_vec(),
            key_prefix: prefix.to_owned(),
            label: label.map(str::to_owned),
            ..RedisLockOptions::default()
        }
    }

    fn lock(addrs: &[String], prefix: &str, label: Option<&str>) -> RedisLock {
        RedisLock::new(options(addrs, prefix, label)).expect("valid Redis lock options")
    }

    /// A plain connection for setting up and inspecting keys.
    async fn raw(addr: &str) -> MultiplexedConnection {
        let client = redis::Client::open(format!("redis://{addr}")).unwrap();
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(STEP));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap()
    }

    /// An address where nothing listens.
    fn closed_addr() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        addr.to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_lock_conforms() {
        let Some(addr) = redis_addr("redis_lock_conforms") else {
            return;
        };
        let prefix = fresh_prefix("conforms");
        ncps_core::testkit::lock_conformance(Arc::new(lock(&[addr], &prefix, None))).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_redis_clients_exclude_each_other() {
        let Some(addr) = redis_addr("two_redis_clients_exclude_each_other") else {
            return;
        };
        let prefix = fresh_prefix("exclusion");
        let addrs = [addr];
        ncps_core::testkit::lock_exclusion(
            Arc::new(lock(&addrs, &prefix, Some("http://a.invalid"))),
            Arc::new(lock(&addrs, &prefix, Some("http://b.invalid"))),
        )
        .await;
    }

    #[tokio::test]
    async fn holder_is_the_other_instances_label() {
        let Some(addr) = redis_addr("holder_is_the_other_instances_label") else {
            return;
        };
        let prefix = fresh_prefix("holder");
        let addrs = [addr];
        let a = lock(&addrs, &prefix, Some("http://a.invalid:8501"));
        let b = lock(&addrs, &prefix, Some("http://b.invalid:8501"));
        let unlabelled = lock(&addrs, &prefix, None);
        let long = Duration::from_secs(60);

        assert_eq!(
            b.holder("k").await.unwrap(),
            None,
            "a free key has a holder"
        );
        let guard = a.try_acquire("k", long).await.unwrap().expect("free key");
        assert_eq!(
            b.holder("k").await.unwrap().as_deref(),
            Some("http://a.invalid:8501")
        );
        assert_eq!(
            a.holder("k").await.unwrap().as_deref(),
            Some("http://a.invalid:8501")
        );
        guard.release().await.unwrap();
        assert_eq!(
            b.holder("k").await.unwrap(),
            None,
            "a released key has a holder"
        );

        let guard = unlabelled
            .try_acquire("k", long)
            .await
            .unwrap()
            .expect("free key");
        assert_eq!(
            a.holder("k").await.unwrap(),
            None,
            "an unlabelled holder has a label"
        );
        guard.release().await.unwrap();
    }

    /// Rounds each process takes the lock in [`two_processes_exclude_each_other`].
    const ROUNDS: i64 = 40;

    /// One process's part in [`two_processes_exclude_each_other`]: meet the
    /// other at a barrier, then take the lock `ROUNDS` times, counting in
    /// Redis how many are inside at once.
    async fn contend_from_this_process(addr: &str, prefix: &str, me: &str, other: &str) {
        let lock = lock(&[addr.to_owned()], prefix, Some(me));
        let mut raw = raw(addr).await;
        let inside = format!("{prefix}inside");
        let overlaps = format!("{prefix}overlaps");
        let total = format!("{prefix}total");
        // Both processes start contending together: each pushes to the
        // other's list, then waits for its own.
        let _: i64 = redis::cmd("RPUSH")
            .arg(format!("{prefix}barrier:{other}"))
            .arg(1)
            .query_async(&mut raw)
            .await
            .unwrap();
        let met: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(format!("{prefix}barrier:{me}"))
            .arg(STEP.as_secs())
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(
            met.is_some(),
            "{me}: the other process never reached the barrier"
        );
        for _ in 0..ROUNDS {
            let guard = timeout(STEP, lock.acquire("shared", Duration::from_secs(30)))
                .await
                .unwrap_or_else(|_| panic!("{me}: acquire hung"))
                .unwrap();
            let now_inside: i64 = redis::cmd("INCR")
                .arg(&inside)
                .query_async(&mut raw)
                .await
                .unwrap();
            if now_inside != 1 {
                let _: i64 = redis::cmd("INCR")
                    .arg(&overlaps)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
            }
            // One more round trip inside, so an overlap has time to show.
            let _: Option<String> = redis::cmd("GET")
                .arg(&total)
                .query_async(&mut raw)
                .await
                .unwrap();
            let _: i64 = redis::cmd("DECR")
                .arg(&inside)
                .query_async(&mut raw)
                .await
                .unwrap();
            let _: i64 = redis::cmd("INCR")
                .arg(&total)
                .query_async(&mut raw)
                .await
                .unwrap();
            guard.release().await.unwrap();
        }
    }

    /// This test binary running only `test`, as a child playing `role`.
    fn child(test: &str, role: &str, prefix: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
        command
            .args([test, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_ROLE, role)
            .env(CHILD_PREFIX, prefix)
            .kill_on_drop(true);
        command
    }

    /// Panics with the child's output unless it succeeded.
    fn assert_succeeded(output: &std::process::Output, what: &str) {
        assert!(
            output.status.success(),
            "{what} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_exclude_each_other() {
        let Some(addr) = redis_addr("two_processes_exclude_each_other") else {
            return;
        };
        if std::env::var(CHILD_ROLE).as_deref() == Ok("contend") {
            let prefix = std::env::var(CHILD_PREFIX).unwrap();
            contend_from_this_process(&addr, &prefix, "child", "parent").await;
            return;
        }
        let prefix = fresh_prefix("processes");
        let child = child(
            "redis::two_processes_exclude_each_other",
            "contend",
            &prefix,
        )
        .output();
        let ((), output) = tokio::join!(
            contend_from_this_process(&addr, &prefix, "parent", "child"),
            async { timeout(STEP * 6, child).await }
        );
        let output = output.expect("the child process hung").unwrap();
        assert_succeeded(&output, "the child process");

        let mut raw = raw(&addr).await;
        let (overlaps, total, inside): (Option<i64>, i64, i64) = redis::pipe()
            .get(format!("{prefix}overlaps"))
            .get(format!("{prefix}total"))
            .get(format!("{prefix}inside"))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(overlaps, None, "two processes held the lock at once");
        assert_eq!(total, 2 * ROUNDS, "rounds under the lock were lost");
        assert_eq!(inside, 0);
    }

    #[tokio::test]
    async fn a_dead_holders_lock_expires() {
        let Some(addr) = redis_addr("a_dead_holders_lock_expires") else {
            return;
        };
        let ttl = Duration::from_secs(3);
        if std::env::var(CHILD_ROLE).as_deref() == Ok("die-holding") {
            let prefix = std::env::var(CHILD_PREFIX).unwrap();
            let guard = lock(&[addr], &prefix, Some("http://dead.invalid"))
                .acquire("held", ttl)
                .await
                .unwrap();
            // Die holding it: no release, no destructors.
            std::mem::forget(guard);
            std::process::exit(0);
        }
        let prefix = fresh_prefix("dead");
        let output = timeout(
            STEP,
            child("redis::a_dead_holders_lock_expires", "die-holding", &prefix).output(),
        )
        .await
        .expect("the child process hung")
        .unwrap();
        assert_succeeded(&output, "the child process");

        let lock = lock(&[addr], &prefix, Some("http://alive.invalid"));
        assert_eq!(
            lock.holder("held").await.unwrap().as_deref(),
            Some("http://dead.invalid"),
            "the dead process's lock is not there"
        );
        assert!(
            lock.try_acquire("held", ttl).await.unwrap().is_none(),
            "a dead process's lock was free before its TTL"
        );
        let guard = timeout(STEP, lock.acquire("held", Duration::from_secs(60)))
            .await
            .expect("a dead process's lock never expired")
            .unwrap();
        assert_eq!(
            lock.holder("held").await.unwrap().as_deref(),
            Some("http://alive.invalid")
        );
        guard.release().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_cluster_lock_conforms_and_excludes() {
        let Some(addrs) = cluster_addrs("redis_cluster_lock_conforms_and_excludes") else {
            return;
        };
        let prefix = fresh_prefix("cluster");
        ncps_core::testkit::lock_conformance(Arc::new(lock(&addrs, &prefix, None))).await;
        let a = lock(&addrs, &prefix, Some("http://a.invalid"));
        let b = lock(&addrs, &prefix, Some("http://b.invalid"));
        // Keys spread over the cluster's nodes, so more than one node answers.
        for n in 0..8 {
            let key = format!("spread-{n}");
            let guard = a
                .try_acquire(&key, Duration::from_secs(60))
                .await
                .unwrap()
                .expect("free key");
            assert_eq!(
                b.holder(&key).await.unwrap().as_deref(),
                Some("http://a.invalid")
            );
            guard.release().await.unwrap();
        }
        ncps_core::testkit::lock_exclusion(Arc::new(a), Arc::new(b)).await;
    }

    /// Asserts `result` is `Unavailable` naming the Redis address, and came in time.
    fn assert_unavailable<T: std::fmt::Debug>(
        result: Result<ncps_core::Result<T>, tokio::time::error::Elapsed>,
        started: Instant,
        addr: &str,
        what: &str,
    ) {
        let result = result.unwrap_or_else(|_| panic!("{what}: hung"));
        match result {
            Err(Error::Unavailable(why)) => {
                assert!(why.contains(addr), "{what}: {why:?} does not name {addr}")
            }
            other => panic!("{what}: expected Unavailable, got {other:?}"),
        }
        assert!(
            started.elapsed() < UNAVAILABLE_WITHIN,
            "{what}: Unavailable took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable_within_seconds() {
        let addr = closed_addr();
        let lock = lock(std::slice::from_ref(&addr), "p:", None);
        let long = Duration::from_secs(60);
        let started = Instant::now();
        let result = timeout(STEP, lock.try_acquire("k", long)).await;
        assert_unavailable(result, started, &addr, "try_acquire");
        let started = Instant::now();
        let result = timeout(STEP, lock.acquire("k", long)).await;
        assert_unavailable(result, started, &addr, "acquire");
        let started = Instant::now();
        let result = timeout(STEP, lock.holder("k")).await;
        assert_unavailable(result, started, &addr, "holder");
        let started = Instant::now();
        let result = timeout(STEP, lock.ping()).await;
        assert_unavailable(result, started, &addr, "ping");
    }

    #[tokio::test]
    async fn a_silent_server_is_unavailable_within_seconds() {
        // Accepts connections and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let silent = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let lock = lock(std::slice::from_ref(&addr), "p:", None);
        let started = Instant::now();
        let result = timeout(STEP, lock.acquire("k", Duration::from_secs(60))).await;
        assert_unavailable(result, started, &addr, "acquire");
        silent.abort();
    }

    #[tokio::test]
    async fn tls_to_a_plain_server_fails_within_seconds() {
        let Some(addr) = redis_addr("tls_to_a_plain_server_fails_within_seconds") else {
            return;
        };
        let lock = RedisLock::new(RedisLockOptions {
            use_tls: true,
            ..options(&[addr], "p:", None)
        })
        .unwrap();
        let started = Instant::now();
        let result = timeout(STEP, lock.ping())
            .await
            .expect("a TLS handshake with a plain server hung");
        assert!(result.is_err(), "TLS to a plain-text Redis succeeded");
        assert!(started.elapsed() < UNAVAILABLE_WITHIN);
    }

    #[tokio::test]
    async fn a_refused_password_is_an_error_that_does_not_show_it() {
        let Some(addr) = redis_addr("a_refused_password_is_an_error_that_does_not_show_it") else {
            return;
        };
        let secret = "not-the-password-8c1f";
        let lock = RedisLock::new(RedisLockOptions {
            username: Some("nobody".into()),
            password: Some(secret.into()),
            ..options(&[addr], "p:", None)
        })
        .unwrap();
        let error = timeout(STEP, lock.ping())
            .await
            .expect("a refused login hung")
            .expect_err("a wrong login was accepted");
        assert!(
            !matches!(error, Error::Unavailable(_)),
            "a refused login is not an outage: {error}"
        );
        let shown = format!("{error} {error:?} {lock:?}");
        assert!(!shown.contains(secret), "the password shows in {shown}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn degraded_mode_conforms_while_redis_is_down() {
        let redis = lock(&[closed_addr()], "p:", None);
        let lock = DegradableLock::new(Arc::new(redis));
        ncps_core::testkit::lock_conformance(Arc::new(lock.clone())).await;
        assert!(lock.is_degraded());
    }

    /// A TCP proxy to `target` that can be cut (every connection closed, new
    /// ones refused) and restored: Redis going away and coming back.
    struct Switch {
        addr: SocketAddr,
        up: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Switch {
        async fn new(target: String) -> Switch {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (up, watch_up) = watch::channel(false);
            let task = tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let mut watch_up = watch_up.clone();
                    if !*watch_up.borrow_and_update() {
                        continue;
                    }
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = watch_up.wait_for(|up| !*up) => {}
                        }
                    });
                }
            });
            Switch { addr, up, task }
        }

        fn set(&self, up: bool) {
            self.up.send_replace(up);
        }
    }

    impl Drop for Switch {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[tokio::test]
    async fn degraded_mode_falls_back_and_comes_back() {
        let Some(addr) = redis_addr("degraded_mode_falls_back_and_comes_back") else {
            return;
        };
        let prefix = fresh_prefix("degraded");
        let long = Duration::from_secs(60);
        let switch = Switch::new(addr.clone()).await;
        let through_switch = RedisLock::new(RedisLockOptions {
            // Fewer, quicker retries: this test waits for each outage.
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            ..options(
                &[switch.addr.to_string()],
                &prefix,
                Some("http://me.invalid"),
            )
        })
        .unwrap();
        let probe = Duration::from_millis(200);
        let lock = DegradableLock::with_probe_interval(Arc::new(through_switch), probe);
        let direct = self::lock(&[addr], &prefix, Some("http://other.invalid"));

        // Redis is away: locks are in-process only.
        let during = lock
            .try_acquire("during", long)
            .await
            .expect("degraded mode fails while Redis is away")
            .expect("a free key");
        assert!(lock.is_degraded());
        assert!(
            lock.try_acquire("during", long).await.unwrap().is_none(),
            "degraded mode does not exclude this instance's tasks"
        );
        direct
            .try_acquire("during", long)
            .await
            .unwrap()
            .expect("a lock taken in degraded mode reached Redis")
            .release()
            .await
            .unwrap();

        // Redis is back: after the probe interval, locks are in Redis again.
        switch.set(true);
        tokio::time::sleep(probe * 2).await;
        let after = lock
            .try_acquire("after", long)
            .await
            .unwrap()
            .expect("a free key");
        assert!(!lock.is_degraded(), "degraded mode outlived the outage");
        assert_eq!(
            direct.holder("after").await.unwrap().as_deref(),
            Some("http://me.invalid"),
            "a lock taken after the outage is not in Redis"
        );
        assert!(direct.try_acquire("after", long).await.unwrap().is_none());
        // The task that took a key during the outage still excludes this
        // instance's others, though Redis does not know it.
        assert!(
            lock.try_acquire("during", long).await.unwrap().is_none(),
            "a key taken during the outage was free in-process after it"
        );
        during.release().await.unwrap();
        lock.try_acquire("during", long)
            .await
            .unwrap()
            .expect("a key released after the outage")
            .release()
            .await
            .unwrap();

        // Redis goes away while a lock is held: extend and release still work.
        switch.set(false);
        assert!(
            after.extend(long).await.unwrap(),
            "extend fails in degraded mode"
        );
        assert!(lock.is_degraded());
        after.release().await.unwrap();
        lock.try_acquire("again", long)
            .await
            .unwrap()
            .expect("degraded mode fails in a second outage")
            .release()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn without_degraded_mode_an_outage_is_unavailable() {
        let Some(addr) = redis_addr("without_degraded_mode_an_outage_is_unavailable") else {
            return;
        };
        let prefix = fresh_prefix("outage");
        let switch = Switch::new(addr).await;
        switch.set(true);
        let shown = switch.addr.to_string();
        let lock = self::lock(std::slice::from_ref(&shown), &prefix, None);
        let long = Duration::from_secs(60);
        let held = lock.acquire("k", long).await.expect("Redis answers");
        switch.set(false);
        let started = Instant::now();
        let result = timeout(STEP, held.extend(long)).await;
        assert_unavailable(result, started, &shown, "extend");
        let started = Instant::now();
        let result = timeout(STEP, lock.try_acquire("other", long)).await;
        assert_unavailable(result, started, &shown, "try_acquire");
        // Back again: the same lock works without being rebuilt.
        switch.set(true);
        timeout(STEP, held.release())
            .await
            .expect("release hung after Redis came back")
            .expect("release failed after Redis came back");
        lock.try_acquire("k", long)
            .await
            .unwrap()
            .expect("the key released after the outage")
            .release()
            .await
            .unwrap();
    }
}
