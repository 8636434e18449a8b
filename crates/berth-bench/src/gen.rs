//! Fast, seekable pseudo-random bytes: byte `i` of a blob is a pure function of its seed and `i`
//! (splitmix64 of the 8-byte word index), so any range can be generated on its own, a digest can
//! be computed before timing without keeping the bytes, and a 100 MiB body is streamed from a
//! small buffer.

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest as _, Sha256};

/// How many bytes one streamed body chunk carries.
const STREAM_CHUNK: usize = 256 << 10;

/// Word `i` of the stream `seed`.
pub fn word(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with bytes `offset..offset + buf.len()` of the stream `seed`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = 0;
    let skip = (offset % 8) as usize;
    if skip != 0 {
        let w = word(seed, offset / 8).to_le_bytes();
        let n = (8 - skip).min(buf.len());
        buf[..n].copy_from_slice(&w[skip..skip + n]);
        pos = n;
    }
    let mut wi = (offset + pos as u64) / 8;
    let mut chunks = buf[pos..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&word(seed, wi).to_le_bytes());
        wi += 1;
    }
    let rem = chunks.into_remainder();
    if !rem.is_empty() {
        let w = word(seed, wi).to_le_bytes();
        let n = rem.len();
        rem.copy_from_slice(&w[..n]);
    }
}

/// Bytes `offset..offset + len` of the stream `seed`, in memory.
pub fn bytes(seed: u64, offset: u64, len: usize) -> Bytes {
    let mut v = vec![0; len];
    fill(seed, offset, &mut v);
    Bytes::from(v)
}

/// `sha256:<hex>` of bytes `0..len` of the stream `seed` (CPU-bound; call off the runtime).
pub fn digest(seed: u64, len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill(seed, off, &mut buf[..n]);
        hasher.update(&buf[..n]);
        off += n as u64;
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Bytes `offset..offset + len` of the stream `seed` as a body stream of 256 KiB chunks.
pub fn stream(
    seed: u64,
    offset: u64,
    len: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let end = offset + len;
    futures_util::stream::unfold(offset, move |off| async move {
        if off >= end {
            return None;
        }
        let n = (end - off).min(STREAM_CHUNK as u64) as usize;
        Some((Ok(bytes(seed, off, n)), off + n as u64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn ranges_agree_with_the_whole() {
        let whole = bytes(42, 0, 1000);
        for (off, len) in [(0, 1), (3, 5), (7, 17), (8, 8), (13, 987), (999, 1)] {
            let part = bytes(42, off as u64, len);
            assert_eq!(&part[..], &whole[off..off + len], "{off}+{len}");
        }
        assert_ne!(bytes(43, 0, 64), bytes(42, 0, 64));
    }

    #[tokio::test]
    async fn stream_and_digest_agree() {
        let len = (STREAM_CHUNK * 2 + 123) as u64;
        let mut all = Vec::new();
        let mut s = std::pin::pin!(stream(9, 0, len));
        while let Some(chunk) = s.next().await {
            all.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(all.len() as u64, len);
        assert_eq!(
            digest(9, len),
            format!("sha256:{}", hex::encode(Sha256::digest(&all)))
        );
    }
}
