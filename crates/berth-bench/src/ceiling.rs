//! The client's own ceiling: a trivial HTTP/1.1 server in this process that answers every
//! request with one blob from memory, on plain blocking threads outside the client's runtime, so
//! a verified pull from it costs the client's receive and sha256 work (plus loopback) and next to
//! nothing else: no registry behind it, no disk, no hashing on the serving side.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// A running ceiling server; stops accepting when dropped.
pub struct CeilingServer {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl Drop for CeilingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves `body` to every request on an ephemeral loopback port.
pub fn serve(body: Bytes) -> Result<CeilingServer, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("ceiling server: bind: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("ceiling server: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::Builder::new()
        .name("ceiling-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (body, stop) = (body.clone(), stop2.clone());
                let _ = std::thread::Builder::new()
                    .name("ceiling-conn".into())
                    .spawn(move || serve_conn(stream, &body, &stop));
            }
        })
        .map_err(|e| format!("ceiling server: {e}"))?;
    Ok(CeilingServer {
        base: format!("http://{addr}"),
        stop,
        addr,
    })
}

fn serve_conn(stream: TcpStream, body: &[u8], stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let Ok(mut write) = stream.try_clone() else {
        return;
    };
    let mut read = BufReader::new(stream);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        // One request head (the bench sends only bodiless GETs).
        let mut saw_request = false;
        loop {
            line.clear();
            match read.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => saw_request = true,
            }
        }
        if saw_request
            && (write.write_all(head.as_bytes()).is_err() || write.write_all(body).is_err())
        {
            break;
        }
    }
    let _ = write.shutdown(Shutdown::Both);
}

/// sha256 throughput over an in-memory buffer, in MiB/s (hashes `data` `rounds` times).
pub fn sha256_mib_per_sec(data: &[u8], rounds: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds.max(1) {
        let mut h = Sha256::new();
        h.update(data);
        std::hint::black_box(h.finalize());
    }
    let secs = start.elapsed().as_secs_f64();
    (data.len() * rounds.max(1)) as f64 / (1 << 20) as f64 / secs.max(1e-9)
}
