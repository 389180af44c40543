//! Real Nix resumes an interrupted NAR download from the proxy with a
//! `Range` request. A TCP middlebox between Nix and the proxy cuts the first
//! NAR transfer halfway.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the middlebox saw.
#[derive(Default)]
struct Seen {
    cut: AtomicBool,
    range_requests: AtomicUsize,
}

/// Forwards connections to `target`; the first response to a NAR GET is cut
/// after `cut_after` bytes.
async fn middlebox(target: String, cut_after: usize, seen: Arc<Seen>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut server = TcpStream::connect(&target).await.unwrap();
                let mut request = vec![0u8; 64 * 1024];
                let mut server_buf = vec![0u8; 64 * 1024];
                let mut cutting = false;
                let mut sent = 0usize;
                loop {
                    tokio::select! {
                        n = client.read(&mut request) => {
                            let Ok(n) = n else { return };
                            if n == 0 { return; }
                            let head = String::from_utf8_lossy(&request[..n]).to_lowercase();
                            if head.starts_with("get /nar/") {
                                if head.contains("\r\nrange: bytes=") {
                                    seen.range_requests.fetch_add(1, Ordering::SeqCst);
                                }
                                cutting = !seen.cut.load(Ordering::SeqCst);
                                sent = 0;
                            }
                            if server.write_all(&request[..n]).await.is_err() { return; }
                        }
                        n = server.read(&mut server_buf) => {
                            let Ok(n) = n else { return };
                            if n == 0 { return; }
                            if cutting && sent + n > cut_after && !seen.cut.swap(true, Ordering::SeqCst) {
                                // Half the answer, then the connection dies.
                                let _ = client.write_all(&server_buf[..cut_after - sent]).await;
                                return;
                            }
                            sent += n;
                            if client.write_all(&server_buf[..n]).await.is_err() { return; }
                        }
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_resumes_a_cut_nar_download_with_a_range_request() {
    if !require_nix("nix_resumes_a_cut_nar_download_with_a_range_request") {
        return;
    }
    let fx = nix_fixture();
    let upstream = StaticServer::start(fx.cache(Compression::None)).await;
    let proxy = Proxy::start(
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key),
    )
    .await;
    let seen = Arc::new(Seen::default());
    let target = proxy.url().trim_start_matches("http://").to_owned();
    let front = middlebox(target, 512 * 1024, seen.clone()).await;

    let copy = nix_copy_from(&front, std::slice::from_ref(&fx.big), &fx.proxy_key.public).await;
    assert!(
        seen.cut.load(Ordering::SeqCst),
        "no NAR transfer went through the middlebox"
    );
    assert!(
        copy.success(),
        "nix copy did not recover from the cut: {copy:?}\n{}",
        proxy.log()
    );
    assert!(copy.all_valid(std::slice::from_ref(&fx.big)).await);
    assert!(
        seen.range_requests.load(Ordering::SeqCst) >= 1,
        "Nix retried without a Range request: {copy:?}"
    );
}
