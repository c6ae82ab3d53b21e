//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`: one request
//! per connection (`Connection: close`), bodies delimited by
//! `Content-Length`, chunked transfer encoding or the end of the stream.
//! Enough for the loopback endpoints of the control plane and the nodes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde::de::DeserializeOwned;

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a plain request may take to answer.
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body (or header line) read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, decoded as UTF-8 (invalid sequences replaced).
    pub body: String,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("unexpected response body: {}", self.body))
    }

    /// Fails unless the status is 2xx, naming `what` and the answer.
    pub fn ensure_success(self, what: &str) -> anyhow::Result<Self> {
        ensure!(
            self.is_success(),
            "{what} answered HTTP {}: {}",
            self.status,
            self.body.trim()
        );
        Ok(self)
    }
}

/// The socket address of an `http://host:port[/...]` URL.
pub fn address_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{url}: {authority} resolves to no address"))
}

/// `GET path` with the short timeout.
pub fn get(address: SocketAddr, path: &str, bearer: Option<&str>) -> anyhow::Result<Response> {
    send(address, "GET", path, bearer, None, SHORT_TIMEOUT)
}

/// `POST path` with a JSON body; `read_timeout` bounds the wait for the
/// answer (each read).
pub fn post_json(
    address: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: &serde_json::Value,
    read_timeout: Duration,
) -> anyhow::Result<Response> {
    let body = body.to_string();
    send(address, "POST", path, bearer, Some(&body), read_timeout)
}

/// Sends one request and reads the response.
pub fn send(
    address: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json_body: Option<&str>,
    read_timeout: Duration,
) -> anyhow::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(SHORT_TIMEOUT))?;
    let request = format_request(address, method, path, bearer, json_body);
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending {method} {path} to {address}"))?;
    stream.flush()?;
    read_response(&mut BufReader::new(stream), method == "HEAD")
        .with_context(|| format!("reading the answer to {method} {path} from {address}"))
}

/// The request text: head and body.
fn format_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json_body: Option<&str>,
) -> String {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Accept: application/json\r\nUser-Agent: custos-testnet\r\n"
    );
    if let Some(token) = bearer {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    match json_body {
        Some(body) => request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None if method == "POST" || method == "PUT" => {
            request.push_str("Content-Length: 0\r\n\r\n");
        }
        None => request.push_str("\r\n"),
    }
    request
}

/// Reads one line (up to `\n`), without the line ending.
fn read_line(reader: &mut impl BufRead) -> anyhow::Result<String> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_BODY as u64)
        .read_until(b'\n', &mut line)?;
    ensure!(
        read > 0,
        "connection closed before the response was complete"
    );
    ensure!(line.ends_with(b"\n"), "truncated line in the response");
    while line
        .last()
        .is_some_and(|byte| *byte == b'\n' || *byte == b'\r')
    {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Parses a response: status line, headers, body. Interim (1xx) responses
/// are skipped.
pub fn read_response(reader: &mut impl BufRead, head_request: bool) -> anyhow::Result<Response> {
    loop {
        let status_line = read_line(reader)?;
        let mut parts = status_line.split_whitespace();
        let version = parts.next().unwrap_or_default();
        ensure!(
            version.starts_with("HTTP/"),
            "not an HTTP response: {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let mut content_length = None;
        let mut chunked = false;
        loop {
            let line = read_line(reader)?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                bail!("bad header line {line:?}");
            };
            let value = value.trim();
            if name.trim().eq_ignore_ascii_case("content-length") {
                let length: usize = value
                    .parse()
                    .with_context(|| format!("bad Content-Length {value:?}"))?;
                ensure!(length <= MAX_BODY, "body of {length} bytes is too large");
                content_length = Some(length);
            } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
                chunked = value
                    .split(',')
                    .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
            }
        }
        if (100..200).contains(&status) {
            continue;
        }
        let body = if head_request || status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            read_chunked(reader)?
        } else if let Some(length) = content_length {
            let mut body = vec![0; length];
            reader
                .read_exact(&mut body)
                .context("connection closed before the whole body arrived")?;
            body
        } else {
            let mut body = Vec::new();
            (&mut *reader)
                .take(MAX_BODY as u64)
                .read_to_end(&mut body)?;
            body
        };
        return Ok(Response {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
}

/// Decodes a chunked body (and skips trailers).
fn read_chunked(reader: &mut impl BufRead) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader)?.is_empty() {}
            return Ok(body);
        }
        ensure!(body.len() + size <= MAX_BODY, "chunked body is too large");
        let start = body.len();
        body.resize(start + size, 0);
        reader
            .read_exact(&mut body[start..])
            .context("connection closed inside a chunk")?;
        ensure!(read_line(reader)?.is_empty(), "missing CRLF after a chunk");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// Serves one connection: returns the request it received (head and
    /// body) after answering `response`.
    fn serve_once(response: &'static [u8]) -> (SocketAddr, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                request.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            request.push_str(&String::from_utf8(body).unwrap());
            let mut stream = reader.into_inner();
            stream.write_all(response).unwrap();
            request
        });
        (address, handle)
    }

    #[test]
    fn content_length_body_and_request_format() {
        let (address, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}",
        );
        let response = get(address, "/api/v1/sys/health", Some("tok")).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "{\"status\":\"ok\"}");
        let value: serde_json::Value = response.json().unwrap();
        assert_eq!(value["status"], "ok");
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /api/v1/sys/health HTTP/1.1\r\n"));
        assert!(request.contains("Connection: close\r\n"));
        assert!(request.contains("Authorization: Bearer tok\r\n"));
        assert!(request.contains(&format!("Host: {address}\r\n")));
    }

    #[test]
    fn post_sends_json_and_decodes_chunks() {
        let (address, server) = serve_once(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\n{\"a\"\r\n6;ext=1\r\n:true}\r\n0\r\nX-Trailer: 1\r\n\r\n",
        );
        let response = post_json(
            address,
            "/api/v1/auth/token",
            None,
            &serde_json::json!({"clientId": "id"}),
            SHORT_TIMEOUT,
        )
        .unwrap();
        assert_eq!(response.status, 201);
        assert_eq!(response.body, "{\"a\":true}");
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /api/v1/auth/token HTTP/1.1\r\n"));
        assert!(request.contains("Content-Type: application/json\r\n"));
        assert!(request.contains("Content-Length: 17\r\n"));
        assert!(request.ends_with("\r\n\r\n{\"clientId\":\"id\"}"));
    }

    #[test]
    fn body_until_close_interim_responses_and_errors() {
        let (address, server) = serve_once(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nX: y\r\n\r\nno such thing",
        );
        let response = get(address, "/nope", None).unwrap();
        server.join().unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.body, "no such thing");
        assert!(!response.is_success());
        let error = response.ensure_success("the thing").unwrap_err();
        assert!(error.to_string().contains("HTTP 404: no such thing"));
    }

    #[test]
    fn malformed_and_truncated_responses_fail() {
        let parse = |text: &[u8]| read_response(&mut &text[..], false);
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2").is_err());
        let empty = parse(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((empty.status, empty.body.as_str()), (204, ""));
    }

    #[test]
    fn connection_refused_is_an_error() {
        let address = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(get(address, "/", None).is_err());
    }

    #[test]
    fn urls_resolve_to_addresses() {
        assert_eq!(
            address_of("http://127.0.0.1:8200").unwrap(),
            "127.0.0.1:8200".parse().unwrap()
        );
        assert_eq!(
            address_of("http://127.0.0.1:9/api").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(address_of("https://127.0.0.1:8200").is_err());
        assert!(address_of("http://127.0.0.1").is_err());
    }
}
