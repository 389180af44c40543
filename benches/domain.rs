//! Benchmarks of the hot Nix domain operations: narinfo parse and write,
//! nix32, signing and verification, and NAR checking throughput.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use ncps_core::nar_verify::{NarCheck, verified};
use ncps_core::{ByteStream, NarInfo, NixHash, SigningKey, nix32};

const NARINFO: &str = "StorePath: /nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-envprobe-hello
URL: nar/1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp.nar.xz
Compression: xz
FileHash: sha256:1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp
FileSize: 201092
NarHash: sha256:12sc9h94pxrf597l7k9ms4ms5q2wdy1372flglb5204hpmdzw17q
NarSize: 201328
References: 0b6fb8isvx2q2sph6knyhjwzvhsdpccr-envprobe-dep
Deriver: 1slp2as59hjm5c8vf2bd0ibjwsl4cnxs-envprobe-hello.drv
Sig: envprobe-cache-1:smKjMsRFBW8LTDOJXbeDelVFTvA2YJlJg84S7MxUi0r+P3o35nZIGC7/qgtOFL6Rdi2y1N2Jk4Nfie/3wYXRDA==
";

fn narinfo(c: &mut Criterion) {
    c.bench_function("narinfo parse", |b| {
        b.iter(|| black_box(NARINFO).parse::<NarInfo>().unwrap())
    });
    let info: NarInfo = NARINFO.parse().unwrap();
    c.bench_function("narinfo write", |b| b.iter(|| black_box(&info).to_string()));
    c.bench_function("narinfo fingerprint", |b| {
        b.iter(|| black_box(&info).fingerprint())
    });
    let key = SigningKey::generate("bench-1");
    c.bench_function("narinfo sign", |b| {
        b.iter(|| black_box(info.clone()).sign(&key))
    });
    let public = [
        "envprobe-cache-1:5X/boBJR/ESr6QlzS/7i/S7O5VxqwTrJme8TQOpGkVg="
            .parse()
            .unwrap(),
    ];
    c.bench_function("narinfo verify", |b| {
        b.iter(|| assert!(black_box(&info).has_valid_signature(&public)))
    });
}

fn nix32_codec(c: &mut Criterion) {
    let hash = NixHash::digest(b"hello");
    c.bench_function("nix32 encode 32 bytes", |b| {
        b.iter(|| nix32::encode(black_box(hash.as_bytes())))
    });
    let s = hash.to_nix32();
    c.bench_function("nix32 decode 52 chars", |b| {
        b.iter(|| nix32::decode(black_box(&s), 32).unwrap())
    });
}

fn nar_check(c: &mut Criterion) {
    let nar: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
    let check = NarCheck {
        compression: "none".into(),
        file_hash: Some(NixHash::digest(&nar)),
        file_size: Some(nar.len() as u64),
        nar_hash: NixHash::digest(&nar),
        nar_size: nar.len() as u64,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("nar check");
    group.throughput(Throughput::Bytes(nar.len() as u64));
    group.sample_size(10);
    group.bench_function("8 MiB uncompressed", |b| {
        b.iter(|| {
            let chunks: Vec<std::io::Result<Bytes>> = nar
                .chunks(64 << 10)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let input: ByteStream = Box::pin(futures::stream::iter(chunks));
            runtime.block_on(async {
                let mut out = verified(input, check.clone()).unwrap();
                while let Some(chunk) = out.next().await {
                    black_box(chunk.unwrap());
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, narinfo, nix32_codec, nar_check);
criterion_main!(benches);
