//! A real HTTP upstream served in-process, and signed store path fixtures,
//! for tests of the engine and the server without Nix.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{NarInfo, NixHash, SigningKey, StorePath, StorePathHash};

/// Files an upstream serves: path -> (status, body, where the body pauses).
type Files = Arc<Mutex<HashMap<String, (StatusCode, Bytes, Option<Gate>)>>>;

/// Holds a body back after its first `at` bytes until opened.
#[derive(Clone, Debug)]
pub struct Gate {
    at: usize,
    open: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    /// A closed gate pausing bodies after `at` bytes.
    pub fn new(at: usize) -> Self {
        Gate {
            at,
            open: tokio::sync::watch::channel(false).0,
        }
    }

    /// Lets every paused body (and every later one) go on.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// The body `bytes`, paused at this gate.
    fn body(&self, bytes: Bytes) -> BoxBody<Bytes, Infallible> {
        let at = self.at.min(bytes.len());
        let (first, rest) = (bytes.slice(..at), bytes.slice(at..));
        let mut open = self.open.subscribe();
        let rest = async move {
            let _ = open.wait_for(|open| *open).await;
            Ok::<_, Infallible>(Frame::data(rest))
        };
        let frames =
            futures::stream::iter([Ok(Frame::data(first))]).chain(futures::stream::once(rest));
        BodyExt::boxed(StreamBody::new(frames))
    }
}

/// An HTTP upstream serving fixed files, counting requests per path.
pub struct TestUpstream {
    /// Its root URL, `http://127.0.0.1:PORT`.
    pub url: String,
    files: Files,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    authorization: Arc<Mutex<Option<String>>>,
}

impl TestUpstream {
    /// Starts serving on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let files: Files = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let authorization: Arc<Mutex<Option<String>>> = Arc::default();
        let (f, h, a) = (files.clone(), hits.clone(), authorization.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (f, h, a) = (f.clone(), h.clone(), a.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let path = request.uri().path().to_owned();
                        *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                        let wanted = a.lock().unwrap().clone();
                        let given = request
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok());
                        let denied = wanted.is_some_and(|w| given != Some(w.as_str()));
                        let (status, body, gate) = if denied {
                            (StatusCode::UNAUTHORIZED, Bytes::new(), None)
                        } else {
                            f.lock().unwrap().get(&path).cloned().unwrap_or((
                                StatusCode::NOT_FOUND,
                                Bytes::new(),
                                None,
                            ))
                        };
                        let len = body.len();
                        let body = match gate {
                            Some(gate) => gate.body(body),
                            None => Full::new(body).boxed(),
                        };
                        let mut response = Response::new(body);
                        response
                            .headers_mut()
                            .insert(hyper::header::CONTENT_LENGTH, len.into());
                        *response.status_mut() = status;
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestUpstream {
            url,
            files,
            hits,
            authorization,
        }
    }

    /// An upstream at an address that refuses connections.
    pub fn dead() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        TestUpstream {
            url: format!("http://127.0.0.1:{port}"),
            files: Arc::default(),
            hits: Arc::default(),
            authorization: Arc::default(),
        }
    }

    /// Serves `body` with `status` at `path`.
    pub fn put(&self, path: &str, status: StatusCode, body: impl Into<Bytes>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, body.into(), None));
    }

    /// Serves `body` at `path`, pausing each response at `gate`.
    pub fn put_gated(&self, path: &str, body: impl Into<Bytes>, gate: &Gate) {
        self.files.lock().unwrap().insert(
            path.to_owned(),
            (StatusCode::OK, body.into(), Some(gate.clone())),
        );
    }

    /// Answers 401 to requests without exactly this `Authorization` header.
    pub fn require_authorization(&self, value: &str) {
        *self.authorization.lock().unwrap() = Some(value.to_owned());
    }

    /// How many requests `path` has had.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A store path with its narinfo and uncompressed NAR bytes.
pub struct Fixture {
    /// Its narinfo, signed.
    pub info: NarInfo,
    /// Its NAR bytes.
    pub nar: Vec<u8>,
}

/// A store path named `name` with `size` NAR bytes (`Compression: none`), signed by `key`.
pub fn fixture(name: &str, size: usize, key: &SigningKey) -> Fixture {
    let nar: Vec<u8> = (0..size).map(|i| (i * 7 + name.len()) as u8).collect();
    let hash = crate::nix32::encode(&NixHash::digest(name.as_bytes()).as_bytes()[..20]);
    let nar_hash = NixHash::digest(&nar);
    let mut info = NarInfo {
        store_path: StorePath::from_base_name(&format!("{hash}-{name}")).unwrap(),
        url: format!("nar/{}.nar", nar_hash.to_nix32()),
        compression: "none".into(),
        file_hash: Some(nar_hash),
        file_size: Some(nar.len() as u64),
        nar_hash,
        nar_size: nar.len() as u64,
        references: Vec::new(),
        deriver: None,
        sigs: Vec::new(),
        ca: None,
        extra: Vec::new(),
    };
    info.sign(key);
    Fixture { info, nar }
}

impl Fixture {
    /// Its store path hash.
    pub fn hash(&self) -> StorePathHash {
        self.info.store_path.hash().clone()
    }

    /// The upstream path of its NAR.
    pub fn nar_path(&self) -> String {
        format!("/{}", self.info.url)
    }

    /// Puts its narinfo and `nar` (its own bytes, or damaged ones) on `upstream`.
    pub fn publish(&self, upstream: &TestUpstream, nar: &[u8]) {
        upstream.put(
            &format!("/{}.narinfo", self.hash()),
            StatusCode::OK,
            self.info.to_string(),
        );
        upstream.put(&self.nar_path(), StatusCode::OK, nar.to_vec());
    }
}
