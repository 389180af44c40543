//! With the `otel` feature, `--otel-enabled` exports the request spans over
//! OTLP/gRPC: a collector in the test (HTTP/2 without TLS, answering every
//! export with gRPC status 0) receives a trace export naming the service
//! and the `request` span once the server stops and flushes.
//! `cargo test -p ncps-server --features otel --test otel`.

#![cfg(feature = "otel")]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Proxy, ProxyConfig, STATIC_PUBLIC_KEY};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// (path, body) of every request the collector received.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/gRPC collector on a free loopback port.
async fn collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push((path, body.to_vec()));
                        // An empty ExportTraceServiceResponse, then grpc-status 0.
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let frames = vec![
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let mut response =
                            Response::new(StreamBody::new(futures::stream::iter(frames)));
                        response
                            .headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn request_spans_reach_the_collector() {
    let (url, received) = collector().await;
    // The only upstream is never asked: no narinfo is requested.
    let mut cfg = ProxyConfig::new("http://127.0.0.1:9", &[STATIC_PUBLIC_KEY]);
    cfg.extra_args = vec!["--otel-enabled".into(), "--otel-grpc-url".into(), url];
    let mut proxy = Proxy::start(cfg).await;
    let response = reqwest::get(format!("{}/nix-cache-info", proxy.url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Stopping flushes the spans still batched.
    let (status, _) = proxy.terminate().await;
    assert!(status.success(), "{status}\n{}", proxy.log());

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exports: Vec<(String, Vec<u8>)> = received.lock().unwrap().clone();
        let found = exports.iter().any(|(path, body)| {
            path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                && contains(body, b"ncps-server")
                && contains(body, b"request")
                && contains(body, b"request_id")
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trace export with the request span; received {:?}\n{}",
            exports
                .iter()
                .map(|(p, b)| (p.clone(), b.len()))
                .collect::<Vec<_>>(),
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
