//! Measures sha256 throughput of sha2 (as berth builds it), ring and aws-lc-rs, fed the way an
//! upload feeds its hasher: a stream of chunks. Prints MiB/s per crate and chunk size (best of
//! five passes over 256 MiB) and whether the CPU has the SHA extensions.

use std::time::Instant;

const TOTAL: usize = 256 << 20;

fn measure(name: &str, chunk: usize, data: &[u8], mut hash: impl FnMut(&[u8]) -> Vec<u8>) {
    let mut best = f64::MAX;
    let mut digest = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        digest = hash(data);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mib = TOTAL as f64 / (1 << 20) as f64;
    println!(
        "| {name} | {} KiB | {:.0} | {:02x?} |",
        chunk >> 10,
        mib / best,
        &digest[..4]
    );
}

fn main() {
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 31 % 251) as u8).collect();
    println!(
        "sha_ni: {}, avx2: {}",
        std::arch::is_x86_feature_detected!("sha"),
        std::arch::is_x86_feature_detected!("avx2")
    );
    println!("| crate | update size | MiB/s | digest prefix |\n|---|---:|---:|---|");
    for chunk in [64 << 10, 512 << 10] {
        measure(
            "sha2 0.10 (asm feature; SHA-NI at run time)",
            chunk,
            &data,
            |d| {
                use sha2::Digest;
                let mut h = sha2::Sha256::new();
                for c in d.chunks(chunk) {
                    h.update(c);
                }
                h.finalize().to_vec()
            },
        );
        measure("ring 0.17", chunk, &data, |d| {
            let mut h = ring::digest::Context::new(&ring::digest::SHA256);
            for c in d.chunks(chunk) {
                h.update(c);
            }
            h.finish().as_ref().to_vec()
        });
        measure("aws-lc-rs 1", chunk, &data, |d| {
            let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            for c in d.chunks(chunk) {
                h.update(c);
            }
            h.finish().as_ref().to_vec()
        });
    }
}
