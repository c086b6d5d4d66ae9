//! A proxy in front of an S3 server that can fail calls: the next N, or
//! every call while it is "down". A failed call is answered `503 SlowDown`
//! without reaching the server, so it is certainly not applied. Used by
//! `tests/nemesis.rs` and `tests/faults.rs` (included there by path, so the
//! other test targets do not carry it).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct FaultProxy {
    addr: String,
    state: Arc<State>,
}

struct State {
    upstream: String,
    fail_next: AtomicUsize,
    down: AtomicBool,
    failed: AtomicUsize,
    /// Client connections, closed when a fault starts: pooled connections
    /// would otherwise carry requests past it.
    open: Mutex<Vec<TcpStream>>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State {
            upstream: upstream.trim_start_matches("http://").trim_end_matches('/').to_string(),
            fail_next: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            failed: AtomicUsize::new(0),
            open: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    let mut open = shared.open.lock().unwrap();
                    open.retain(|s| s.peer_addr().is_ok());
                    open.push(c);
                }
                let state = shared.clone();
                std::thread::spawn(move || serve(conn, &state));
            }
        });
        FaultProxy { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fails the next `n` calls.
    pub fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, Ordering::SeqCst);
        self.cut();
    }

    /// While down, every call fails.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
        if down {
            self.cut();
        } else {
            self.state.fail_next.store(0, Ordering::SeqCst);
        }
    }

    /// Of the calls `fail_next` named, those not failed yet.
    pub fn remaining(&self) -> usize {
        self.state.fail_next.load(Ordering::SeqCst)
    }

    /// Calls failed so far.
    pub fn failed(&self) -> usize {
        self.state.failed.load(Ordering::SeqCst)
    }

    fn cut(&self) {
        for conn in self.state.open.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn serve(mut client: TcpStream, state: &State) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    // The first request's head, byte by byte so nothing past it is consumed;
    // the rest of the connection is piped as it is.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let take = state.down.load(Ordering::SeqCst)
        || state.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if take {
        // Read the body, so closing does not reset the connection before
        // the client has read the answer.
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<u64>().unwrap_or(0)))
            .unwrap_or(0);
        if !text.contains("expect: 100-continue") {
            let _ = std::io::copy(&mut (&client).take(length), &mut std::io::sink());
        }
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                    <Message>injected fault</Message></Error>";
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(answer.as_bytes());
        state.failed.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Write);
        return;
    }
    let Ok(mut server) = TcpStream::connect(&state.upstream) else { return };
    let _ = client.set_read_timeout(None);
    if server.write_all(&head).is_err() {
        return;
    }
    let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone()) else { return };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut server_w);
        let _ = server_w.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
}
