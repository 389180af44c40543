//! A synthetic binary cache on disk, as `nix copy --to file://` lays one out:
//! `nix-cache-info`, signed `<hash>.narinfo` files and uncompressed
//! `nar/<FileHash>.nar` files, each a real NAR of one regular file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use ncps_core::hash::HashingCounter;
use ncps_core::{NarInfo, NixHash, SigningKey, StorePath};

/// Smallest and largest NAR payloads.
const MIN_SIZE: u64 = 1024;
const MAX_SIZE: u64 = 50 << 20;

/// One store path of the cache.
pub struct CachedPath {
    /// `/<hash>.narinfo`.
    pub narinfo_url: String,
    /// `/nar/<FileHash>.nar`.
    pub nar_url: String,
    /// Bytes of its NAR.
    pub nar_size: u64,
    /// SHA-256 of its NAR.
    pub nar_hash: NixHash,
}

/// The generated cache.
pub struct Cache {
    /// Its directory.
    pub root: PathBuf,
    /// Its paths, smallest first.
    pub paths: Vec<CachedPath>,
    /// The key that signed its narinfos, `name:base64`.
    pub public_key: String,
}

/// A fast deterministic byte source (xorshift64*).
struct Bytes(u64);

impl Bytes {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Payload sizes from `MIN_SIZE` to `MAX_SIZE`, spread so most are small and
/// the total is about `total`.
fn sizes(count: usize, total: u64) -> Vec<u64> {
    let ratio = (MAX_SIZE as f64 / MIN_SIZE as f64).ln();
    let with = |p: f64| -> Vec<u64> {
        (0..count)
            .map(|i| {
                let x = if count > 1 {
                    i as f64 / (count - 1) as f64
                } else {
                    1.0
                };
                (MIN_SIZE as f64 * (ratio * x.powf(p)).exp()) as u64
            })
            .collect()
    };
    // A larger exponent makes more paths small: search for the one giving `total`.
    let (mut lo, mut hi) = (0.05, 50.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if with(mid).iter().sum::<u64>() > total {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    with(hi)
}

/// Writes a NAR string: length, bytes, zero padding to 8.
fn nar_str(out: &mut impl Write, hash: &mut HashingCounter, s: &[u8]) {
    let len = (s.len() as u64).to_le_bytes();
    out.write_all(&len).unwrap();
    hash.update(&len);
    out.write_all(s).unwrap();
    hash.update(s);
    let pad = [0u8; 8];
    let n = (8 - s.len() % 8) % 8;
    out.write_all(&pad[..n]).unwrap();
    hash.update(&pad[..n]);
}

/// Writes the NAR of one regular file of `size` pseudo-random bytes.
fn write_nar(path: &Path, size: u64, seed: u64) -> (NixHash, u64) {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut hash = HashingCounter::default();
    for s in ["nix-archive-1", "(", "type", "regular", "contents"] {
        nar_str(&mut out, &mut hash, s.as_bytes());
    }
    let len = size.to_le_bytes();
    out.write_all(&len).unwrap();
    hash.update(&len);
    let mut bytes = Bytes(seed | 1);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        bytes.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    let pad = [0u8; 8];
    let n = ((8 - size % 8) % 8) as usize;
    out.write_all(&pad[..n]).unwrap();
    hash.update(&pad[..n]);
    nar_str(&mut out, &mut hash, b")");
    out.flush().unwrap();
    hash.finish()
}

impl Cache {
    /// Writes a cache of `count` paths with about `total` NAR bytes under `root`.
    pub fn generate(root: &Path, count: usize, total: u64) -> Cache {
        std::fs::create_dir_all(root.join("nar")).unwrap();
        std::fs::write(
            root.join("nix-cache-info"),
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
        )
        .unwrap();
        let key = SigningKey::generate("bench-upstream-1");
        let mut paths = Vec::new();
        for (i, size) in sizes(count, total).into_iter().enumerate() {
            let name = format!("bench-{i}");
            let hash = ncps_core::nix32::encode(&NixHash::digest(name.as_bytes()).as_bytes()[..20]);
            let tmp = root.join("nar").join("tmp.nar");
            let (nar_hash, nar_size) = write_nar(&tmp, size, i as u64 + 1);
            let file = format!("nar/{}.nar", nar_hash.to_nix32());
            std::fs::rename(&tmp, root.join(&file)).unwrap();
            let mut info = NarInfo {
                store_path: StorePath::from_base_name(&format!("{hash}-{name}")).unwrap(),
                url: file.clone(),
                compression: "none".into(),
                file_hash: Some(nar_hash),
                file_size: Some(nar_size),
                nar_hash,
                nar_size,
                references: Vec::new(),
                deriver: None,
                sigs: Vec::new(),
                ca: None,
                extra: Vec::new(),
            };
            info.sign(&key);
            std::fs::write(root.join(format!("{hash}.narinfo")), info.to_string()).unwrap();
            paths.push(CachedPath {
                narinfo_url: format!("/{hash}.narinfo"),
                nar_url: format!("/{file}"),
                nar_size,
                nar_hash,
            });
        }
        Cache {
            root: root.to_owned(),
            paths,
            public_key: key.public_key().to_string(),
        }
    }

    /// Bytes of all NARs.
    pub fn total_bytes(&self) -> u64 {
        self.paths.iter().map(|p| p.nar_size).sum()
    }

    /// Every narinfo's URL path.
    pub fn narinfo_urls(&self) -> Vec<String> {
        self.paths.iter().map(|p| p.narinfo_url.clone()).collect()
    }

    /// Every NAR's URL path.
    pub fn nar_urls(&self) -> Vec<String> {
        self.paths.iter().map(|p| p.nar_url.clone()).collect()
    }

    /// The path with the largest NAR.
    pub fn largest(&self) -> &CachedPath {
        self.paths.iter().max_by_key(|p| p.nar_size).unwrap()
    }
}
