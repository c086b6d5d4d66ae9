//! A proxy in front of an S3 server that reads every HTTP/1.1 request and
//! can make chosen ones ambiguous: the request reaches the server, which
//! applies it, but the client is answered `500 InternalError` instead of the
//! server's reply, as when an answer is lost on the way back. The client
//! cannot tell whether its write happened; the store knows it did.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Forwards every request to `upstream`; while armed, answers the PUTs
/// whose path ends with `suffix` with a 500 after the server applied them.
pub struct AmbiguousWriteProxy {
    addr: String,
    remaining: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

struct Rule {
    upstream: String,
    suffix: String,
    remaining: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl AmbiguousWriteProxy {
    pub fn start(upstream: &str, suffix: &str) -> AmbiguousWriteProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let remaining = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let rule = Arc::new(Rule {
            upstream: upstream.trim_start_matches("http://").trim_end_matches('/').to_string(),
            suffix: suffix.to_string(),
            remaining: remaining.clone(),
            answered: answered.clone(),
        });
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let rule = rule.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &rule);
                });
            }
        });
        AmbiguousWriteProxy { addr, remaining, answered }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes the next `n` matching PUTs ambiguous (0 turns the faults off).
    pub fn fail_next(&self, n: usize) {
        self.remaining.store(n, Ordering::SeqCst);
    }

    /// Matching PUTs applied by the server but answered 500 so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    pub fn remaining(&self) -> usize {
        self.remaining.load(Ordering::SeqCst)
    }
}

/// One HTTP/1.1 message head: the start line and the headers.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    fn encode(&self, skip: &[&str]) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            if !skip.iter().any(|s| k.eq_ignore_ascii_case(s)) {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

/// Reads a message head; `None` on a clean end of stream before it.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("end of stream inside a head"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad("malformed header"))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(Some(Head { start: start.trim_end_matches(['\r', '\n']).to_string(), headers }))
}

/// Reads a body framed by `head` as raw bytes (chunk framing kept), or
/// up to the end of the stream when `until_close`.
fn read_body(r: &mut impl BufRead, head: &Head, until_close: bool) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.has_token("transfer-encoding", "chunked") {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            body.extend_from_slice(line.as_bytes());
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t)?;
                    body.extend_from_slice(t.as_bytes());
                    if t.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let at = body.len();
            body.resize(at + size + 2, 0);
            r.read_exact(&mut body[at..])?;
        }
    }
    if let Some(len) = head.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if until_close {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn serve(client: TcpStream, rule: &Rule) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let mut upstream: Option<(BufReader<TcpStream>, TcpStream)> = None;
    while let Some(request) = read_head(&mut from_client)? {
        let mut parts = request.start.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        if request.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            // The proxy takes the body itself and sends it on whole.
            to_client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = read_body(&mut from_client, &request, false)?;
        if upstream.is_none() {
            let conn = TcpStream::connect(&rule.upstream)?;
            conn.set_read_timeout(Some(Duration::from_secs(60)))?;
            upstream = Some((BufReader::new(conn.try_clone()?), conn));
        }
        let (from_server, to_server) = upstream.as_mut().unwrap();
        to_server.write_all(&request.encode(&["expect"]))?;
        to_server.write_all(&body)?;
        let response = loop {
            let head = read_head(from_server)?.ok_or_else(|| bad("server closed"))?;
            if !head.start.split(' ').nth(1).is_some_and(|s| s.starts_with('1')) {
                break head;
            }
        };
        let status = response.start.split(' ').nth(1).unwrap_or("");
        let no_body = method == "HEAD" || status == "204" || status == "304";
        let response_body = if no_body { Vec::new() } else { read_body(from_server, &response, true)? };
        let path = target.split('?').next().unwrap_or("");
        let ambiguous = method == "PUT"
            && path.ends_with(&rule.suffix)
            && rule.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if ambiguous {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
                        <Message>We encountered an internal error. Please try again.</Message></Error>";
            let answer = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            to_client.write_all(answer.as_bytes())?;
            rule.answered.fetch_add(1, Ordering::SeqCst);
            let _ = to_client.shutdown(Shutdown::Both);
            return Ok(());
        }
        to_client.write_all(&response.encode(&[]))?;
        to_client.write_all(&response_body)?;
        let closes = |h: &Head| h.has_token("connection", "close");
        let framed = response.header("content-length").is_some()
            || response.has_token("transfer-encoding", "chunked")
            || no_body;
        if closes(&request) || closes(&response) || !framed {
            let _ = to_client.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
    Ok(())
}
